"""β schedules: closed forms, zero terminal SNR, the small-T warning, configs and the README's ᾱ_T table."""

from __future__ import annotations

import inspect
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ddpm_lab import make_betas
from ddpm_lab.diffusion.schedules import SCHEDULES, rescale_zero_terminal_snr

REPO = Path(__file__).resolve().parents[3]
NAMES = ["linear", "quadratic", "cosine", "sigmoid"]


def alpha_bar(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1.0 - betas, 0)


def test_linear_and_quadratic_closed_forms() -> None:
    b = make_betas("linear", timesteps=11, beta_start=0.001, beta_end=0.021, warn=False)
    assert b.dtype == torch.float64
    torch.testing.assert_close(b, 0.001 + 0.002 * torch.arange(11, dtype=torch.float64))
    q = make_betas("quadratic", timesteps=11, beta_start=0.0004, beta_end=0.0144, warn=False)
    torch.testing.assert_close(q.sqrt(), 0.02 + 0.01 * torch.arange(11, dtype=torch.float64))


@pytest.mark.parametrize("T", [50, 1000])
def test_cosine_alpha_bar_closed_form(T: int) -> None:
    s = 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    ab = alpha_bar(make_betas("cosine", timesteps=T))
    expected = torch.tensor([f(t) / f(0) for t in range(1, T + 1)], dtype=torch.float64)
    # equal until β hits its 0.999 cap at the very end
    torch.testing.assert_close(ab[:-1], expected[:-1], rtol=1e-10, atol=1e-14)
    assert make_betas("cosine", timesteps=T).max() <= 0.999


def test_sigmoid_closed_form() -> None:
    b = make_betas("sigmoid", timesteps=5, warn=False)
    x = torch.tensor([-6.0, -3.0, 0.0, 3.0, 6.0], dtype=torch.float64)
    torch.testing.assert_close(b, 1.0 / (1.0 + torch.exp(-x)) * (0.02 - 1e-4) + 1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_zero_terminal_snr(name: str) -> None:
    betas = make_betas(name, timesteps=200, warn=False)
    rescaled = make_betas(name, timesteps=200, zero_terminal_snr=True)
    sqrt_old, sqrt_new = alpha_bar(betas).sqrt(), alpha_bar(rescaled).sqrt()
    assert sqrt_new[-1] == 0.0 and rescaled[-1] == 1.0
    torch.testing.assert_close(sqrt_new[0], sqrt_old[0])
    # Lin et al.: √ᾱ is shifted and scaled, i.e. an affine function of the original √ᾱ
    slope = (sqrt_new[0] - sqrt_new[-1]) / (sqrt_old[0] - sqrt_old[-1])
    torch.testing.assert_close(sqrt_new, (sqrt_old - sqrt_old[-1]) * slope, rtol=1e-9, atol=1e-12)


def test_small_T_warning() -> None:
    with pytest.warns(UserWarning, match="zero_terminal_snr"):
        make_betas("linear", timesteps=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_betas("linear", timesteps=1000)
        make_betas("cosine", timesteps=50)
        make_betas("linear", timesteps=50, zero_terminal_snr=True)
        make_betas("linear", timesteps=50, warn=False)


def test_user_errors() -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        make_betas("exponential")
    with pytest.raises(ValueError, match="cosine schedule takes no parameter beta_end"):
        make_betas("cosine", beta_end=0.03)
    with pytest.raises(ValueError, match="beta_start < beta_end"):
        make_betas("linear", beta_start=0.02, beta_end=0.01)
    with pytest.raises(ValueError, match="timesteps"):
        make_betas("linear", timesteps=0)
    with pytest.raises(ValueError, match="at least 2"):
        rescale_zero_terminal_snr(torch.tensor([0.5], dtype=torch.float64))


@pytest.mark.parametrize("name", NAMES)
def test_schedule_configs(name: str) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "schedule" / f"{name}.yaml"))
    assert cfg.pop("_target_") == "ddpm_lab.diffusion.make_betas"
    assert cfg.pop("name") == name
    assert {"timesteps", "zero_terminal_snr"} <= set(cfg)
    params = set(inspect.signature(SCHEDULES[name]).parameters) - {"timesteps"}
    assert set(cfg) - {"timesteps", "zero_terminal_snr"} == params
    torch.testing.assert_close(make_betas(name, **cfg), SCHEDULES[name](timesteps=cfg["timesteps"]))


def test_readme_terminal_alpha_bar_table_is_measured() -> None:
    """The README's ᾱ_T table is what make_betas gives."""
    text = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| ([^\n]+) \|$", text.split("ᾱ_T of each schedule", 1)[1], flags=re.M)
    table = {name: [float(v) for v in vals.split(" | ")] for name, vals in rows if name in NAMES}
    assert set(table) == set(NAMES)
    for name, values in table.items():
        for T, documented in zip([50, 100, 250, 1000], values):
            measured = float(alpha_bar(make_betas(name, timesteps=T, warn=False))[-1])
            assert measured == pytest.approx(documented, rel=5e-3), (name, T)
