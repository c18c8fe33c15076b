"""Samplers: timesteps, configs = make_sampler kwargs, determinism, one SampleStep per evaluation, x̂_0 handling."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import ddpm_lab
from ddpm_lab import GaussianDiffusion, make_betas, make_sampler
from ddpm_lab.diffusion import SigmaSampler
from ddpm_lab.diffusion.samplers import SAMPLERS, dynamic_threshold
from ddpm_lab.diffusion.spacing import space_timesteps

REPO = Path(__file__).resolve().parents[3]
FAST = {
    "ddpm": {"steps": 10},
    "ddim": {"steps": 8, "eta": 0.5},
    "dpm_solver": {"steps": 6},
    "diffusers": {"scheduler": "EulerAncestralDiscreteScheduler", "steps": 6},
    "edm_heun": {"steps": 4, "s_churn": 10.0},
    "edm_euler": {"steps": 6},
    "edm_dpm_solver": {"steps": 6},
}


def toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.tanh(x) + 1e-3 * t.view(-1, *[1] * (x.ndim - 1))


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(make_betas("cosine", timesteps=100), prediction="eps")


def test_space_timesteps() -> None:
    assert space_timesteps(1000, 5, "linspace") == [0, 250, 500, 749, 999]
    assert space_timesteps(1000, 5, "leading") == [0, 200, 400, 600, 800]
    assert space_timesteps(1000, 5, "trailing") == [199, 399, 599, 799, 999]
    assert space_timesteps(10, None) == list(range(10))
    for spacing in ("linspace", "leading", "trailing"):
        for steps in (1, 3, 7, 29, 31, 100):
            ts = space_timesteps(100, steps, spacing)
            assert len(ts) == len(set(ts)) == steps and ts == sorted(ts) and 0 <= ts[0] and ts[-1] <= 99
    with pytest.raises(ValueError, match="steps"):
        space_timesteps(100, 101)


def test_quadratic_spacing_is_ddims() -> None:
    """Song et al. (2021), CIFAR-10: τ_i = ⌊(i·√(0.8T)/(S−1))²⌋, as ``(np.linspace(0, np.sqrt(T * 0.8), S) ** 2)`` cast
    to int in their code; repeated timesteps (no-op DDIM steps) are kept once."""
    assert space_timesteps(1000, 10, "quadratic") == [0, 9, 39, 88, 158, 246, 355, 483, 632, 800]
    for T, S in ((1000, 20), (1000, 50), (1000, 100), (50, 7), (4000, 64)):
        c = 0.8 * T / (S - 1) ** 2
        assert space_timesteps(T, S, "quadratic") == sorted({math.floor(c * i * i + 1e-9) for i in range(S)})
    assert len(space_timesteps(1000, 100, "quadratic")) == 96  # 0, 0, 0, 0, 1, ...: four steps merged
    assert make_sampler("ddim", steps=10, spacing="quadratic").timesteps(1000)[:3] == [800, 632, 483]
    assert make_sampler("dpm_solver", steps=9, spacing="quadratic").timesteps(1000)[-1] == 9  # σ = 0 after it
    with pytest.raises(ValueError, match="spacing"):
        space_timesteps(100, 10, "uniform")


def test_timesteps_descending() -> None:
    assert make_sampler("ddim", steps=4, spacing="trailing").timesteps(100) == [99, 74, 49, 24]
    assert make_sampler("dpm_solver", steps=4).timesteps(100) == [99, 74, 50, 25]  # linspace over 5 points, 0 skipped
    assert make_sampler("ddpm").timesteps(5) == [4, 3, 2, 1, 0]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_config_keys_are_make_sampler_kwargs(name: str) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "sampler" / f"{name}.yaml"))
    target = cfg.pop("_target_")
    assert target == f"ddpm_lab.diffusion.{SAMPLERS[name].__name__}"
    assert list(cfg) == list(inspect.signature(SAMPLERS[name]).parameters)
    sampler = make_sampler(name, **cfg)
    assert sampler.options == cfg
    assert repr(sampler) == repr(make_sampler(name, **sampler.options))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_steps_yield_one_sample_step_per_evaluation(name: str, diffusion: GaussianDiffusion) -> None:
    sampler = make_sampler(name, **FAST[name])
    calls: list[int] = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x.shape[0],) and t.dtype == torch.long
        calls.append(int(t[0]))
        return toy_model(x, t)

    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    steps = list(diffusion.sample_loop(model, x_T=x_T, generator=torch.Generator().manual_seed(1), sampler=sampler))
    assert [s.t for s in steps] == calls == sampler.visited(diffusion)
    if not isinstance(sampler, SigmaSampler):  # a σ-space sampler's levels depend on the process, not on T alone
        assert sampler.visited(diffusion) == sampler.timesteps(100)
    assert len(calls) == len(sampler.timesteps(100))
    assert all(s.x.shape == s.x0_pred.shape == x_T.shape and torch.isfinite(s.x).all() for s in steps)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_generator_same_samples(name: str, diffusion: GaussianDiffusion) -> None:
    sampler = make_sampler(name, **FAST[name])
    draw = lambda seed: diffusion.sample(
        toy_model, shape=(4, 1, 4, 4), sampler=sampler, generator=torch.Generator().manual_seed(seed)
    )
    a, b, c = draw(0), draw(0), draw(1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_keep_returns_intermediate_states(diffusion: GaussianDiffusion) -> None:
    sampler = make_sampler("ddim", steps=5)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x, kept = diffusion.sample(toy_model, x_T=x_T, sampler=sampler, keep="all")
    assert sorted(kept) == sorted(sampler.timesteps(100)) and torch.equal(kept[99], x_T)
    assert torch.equal(x, diffusion.sample(toy_model, x_T=x_T, sampler=sampler))


def test_public_api_snippet() -> None:
    betas = ddpm_lab.make_betas("cosine", timesteps=1000)
    diffusion = ddpm_lab.GaussianDiffusion(betas, prediction="eps")
    sampler = ddpm_lab.make_sampler("ddim", steps=50, eta=0.0)
    x = diffusion.sample(toy_model, shape=(16, 1, 28, 28), sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert x.abs().max() <= 1.0 + 1e-6  # the last x̂_0 is clipped, and the last step returns it


def test_dynamic_threshold() -> None:
    x0 = torch.tensor([[0.2, -0.5, 0.9, 0.1], [4.0, -2.0, 1.0, 0.0]]).view(2, 1, 2, 2)
    out = dynamic_threshold(x0, 0.75)
    torch.testing.assert_close(out[0], x0[0])  # percentile below 1: s = 1, inside [−1, 1] nothing changes
    s = torch.quantile(x0[1].abs().flatten(), 0.75)
    torch.testing.assert_close(out[1], x0[1].clamp(-s, s) / s)
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_clip_and_threshold_options(name: str, diffusion: GaussianDiffusion) -> None:
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 97)
    out = 3 * torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    raw = diffusion.predict_x0(x, t, out)
    assert raw.abs().max() > 1
    off = make_sampler(name, clip_denoised=False)
    clip = make_sampler(name, clip_denoised=True)
    thresh = make_sampler(name, clip_denoised=True, dynamic_threshold=0.9)
    torch.testing.assert_close(off.denoised(diffusion, x, t, out), raw)
    torch.testing.assert_close(clip.denoised(diffusion, x, t, out), raw.clamp(-1, 1))
    torch.testing.assert_close(thresh.denoised(diffusion, x, t, out), dynamic_threshold(raw, 0.9))


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_zero_terminal_snr_sampling_is_finite(name: str, prediction: str) -> None:
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=100, zero_terminal_snr=True), prediction=prediction)
    trailing = name != "ddpm" and not issubclass(SAMPLERS[name], SigmaSampler)  # σ-space samplers: no spacing
    sampler = make_sampler(name, **FAST[name], **({"spacing": "trailing"} if trailing else {}))
    assert sampler.timesteps(100)[0] == 99  # starts at ᾱ = 0 (a σ-space sampler: at the largest finite σ_t)
    for step in diffusion.sample_loop(
        toy_model, shape=(2, 1, 4, 4), sampler=sampler, generator=torch.Generator().manual_seed(0)
    ):
        assert torch.isfinite(step.x).all() and torch.isfinite(step.x0_pred).all()


def test_user_errors() -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("euler")
    with pytest.raises(ValueError, match="takes no option variance"):
        make_sampler("ddim", variance="fixed_small")
    with pytest.raises(ValueError, match="eta"):
        make_sampler("ddim", eta=1.5)
    with pytest.raises(ValueError, match="variance"):
        make_sampler("ddpm", variance="learned")
    with pytest.raises(ValueError, match="order"):
        make_sampler("dpm_solver", order=3)
    with pytest.raises(ValueError, match="dynamic_threshold"):
        make_sampler("ddpm", dynamic_threshold=99.5)
    with pytest.raises(ValueError, match="spacing"):
        make_sampler("ddim", spacing="uniform")
    with pytest.raises(ValueError, match="steps"):
        make_sampler("ddim", steps=200).timesteps(100)


def test_first_order_dpm_solver_is_deterministic_ddim(diffusion: GaussianDiffusion) -> None:
    """DPM-Solver++ of order 1 is DDIM with η = 0 (Lu et al., 2022): same timesteps, same chain."""
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dpm = diffusion.sample(
        toy_model,
        x_T=x_T,
        sampler=make_sampler("dpm_solver", steps=7, order=1, spacing="trailing", clip_denoised=False),
    )
    ddim = diffusion.sample(
        toy_model, x_T=x_T, sampler=make_sampler("ddim", steps=7, eta=0.0, spacing="trailing", clip_denoised=False)
    )
    torch.testing.assert_close(dpm, ddim, rtol=1e-10, atol=1e-10)
