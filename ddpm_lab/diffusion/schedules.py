"""β_t noise schedules, all computed in float64.

Each function returns a 1-D float64 tensor ``betas`` of length ``timesteps`` where ``betas[i]``
is β at step t = i + 1 (index 0 is the first noising step).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable

import torch

from ddpm_lab.errors import ConfigError, check_number

__all__ = [
    "linear_betas",
    "quadratic_betas",
    "cosine_betas",
    "sigmoid_betas",
    "karras_betas",
    "karras_sigmas",
    "rescale_zero_terminal_snr",
    "make_betas",
    "SCHEDULES",
]

# ᾱ_T above this leaves visible signal in x_T (√ᾱ_T ≳ 0.07): sampling from pure noise then mismatches training.
_TERMINAL_ALPHA_BAR_WARN = 5e-3


def _check_range(beta_start: float, beta_end: float) -> None:
    beta_start = check_number(beta_start, "schedule.beta_start", float, 0, 1, low_open=True, high_open=True)
    beta_end = check_number(beta_end, "schedule.beta_end", float, 0, 1, low_open=True, high_open=True)
    if beta_end <= beta_start:
        raise ConfigError(
            f"schedule.beta_end={beta_end} must be larger than schedule.beta_start={beta_start}: "
            "β must increase (0 < beta_start < beta_end < 1)"
        )


def _check_timesteps(timesteps: int) -> int:
    return check_number(timesteps, "schedule.timesteps", int, low=1)


def linear_betas(timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. (2020): β_t = linspace(β_start, β_end, T)."""
    timesteps = _check_timesteps(timesteps)
    _check_range(beta_start, beta_end)
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def quadratic_betas(timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_t = linspace(√β_start, √β_end, T)² (diffusers' ``scaled_linear``)."""
    timesteps = _check_timesteps(timesteps)
    _check_range(beta_start, beta_end)
    return torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2


def cosine_betas(timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021): ᾱ(t) = cos²(((t/T)+s)/(1+s)·π/2), β_t = min(1 − ᾱ(t)/ᾱ(t−1), max_beta)."""
    timesteps = _check_timesteps(timesteps)
    check_number(s, "schedule.s", float, low=0)
    check_number(max_beta, "schedule.max_beta", float, 0, 1, low_open=True)

    def f(t: torch.Tensor) -> torch.Tensor:
        return torch.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2

    t = torch.arange(timesteps + 1, dtype=torch.float64)
    betas = 1.0 - f(t[1:]) / f(t[:-1])
    return betas.clamp(max=max_beta)


def sigmoid_betas(timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """diffusers' ``sigmoid``: β_t = sigmoid(linspace(−6, 6, T))·(β_end − β_start) + β_start."""
    timesteps = _check_timesteps(timesteps)
    _check_range(beta_start, beta_end)
    x = torch.linspace(-6.0, 6.0, timesteps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: σ_i = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, i = 0 … N−1,
    descending from σ_max to σ_min (float64; one step is σ_max alone)."""
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    high, low = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (high + ramp * (low - high)) ** rho


def check_sigma_range(sigma_min: float, sigma_max: float, rho: float, key: str) -> tuple[float, float, float]:
    """0 < σ_min < σ_max and ρ > 0, each named ``<key>.<name>`` when refused."""
    sigma_min = check_number(sigma_min, f"{key}.sigma_min", float, low=0, low_open=True)
    sigma_max = check_number(sigma_max, f"{key}.sigma_max", float, low=0, low_open=True)
    rho = check_number(rho, f"{key}.rho", float, low=0, low_open=True)
    if not (math.isfinite(sigma_max) and sigma_min < sigma_max):
        raise ConfigError(
            f"{key}.sigma_min={sigma_min:g} must be below {key}.sigma_max={sigma_max:g} (both finite, > 0)"
        )
    return sigma_min, sigma_max, rho


def karras_betas(
    timesteps: int = 1000, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> torch.Tensor:
    """The noise levels of Karras et al. (2022) as a β schedule: σ_t on the ρ-ramp of eq. 5 from σ_min (t = 0) to
    σ_max (t = T−1), ᾱ_t = 1/(1 + σ_t²), so x_t/√ᾱ_t = x_0 + σ_t ε; β_t = (σ_t² − σ_{t−1}²)/(1 + σ_t²).

    The default grid of ``diffusion=edm``: the range its samplers cover and the timestep labels of its chains;
    any VP model can train on it too.
    """
    timesteps = _check_timesteps(timesteps)
    sigma_min, sigma_max, rho = check_sigma_range(sigma_min, sigma_max, rho, "schedule")
    sigma2 = karras_sigmas(timesteps, sigma_min, sigma_max, rho).flip(0) ** 2  # ascending in t
    previous = torch.cat([sigma2.new_zeros(1), sigma2[:-1]])
    return (sigma2 - previous) / (1.0 + sigma2)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2023), Alg. 1: shift and scale √ᾱ so that √ᾱ_T = 0 while √ᾱ_1 is unchanged (β_T becomes 1)."""
    if betas.numel() < 2:
        raise ConfigError("schedule.zero_terminal_snr needs a schedule with at least 2 timesteps")
    sqrt_ab = torch.cumprod(1.0 - betas.double(), 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear_betas,
    "quadratic": quadratic_betas,
    "scaled_linear": quadratic_betas,
    "cosine": cosine_betas,
    "squaredcos_cap_v2": cosine_betas,
    "sigmoid": sigmoid_betas,
    "karras": karras_betas,
}


def make_betas(
    name: str, timesteps: int = 1000, zero_terminal_snr: bool = False, warn: bool = True, **kwargs: float
) -> torch.Tensor:
    """Build a float64 β schedule by name (``linear``, ``quadratic``, ``cosine``, ``sigmoid``, ``karras``).

    ``zero_terminal_snr`` rescales it so ᾱ_T = 0 (Lin et al., 2023). Warns when ᾱ_T is so large
    that x_T still visibly holds the image (typical for a linear schedule with small T).
    """
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}: set schedule.name to one of {sorted(SCHEDULES)}")
    accepted = [p for p in inspect.signature(SCHEDULES[name]).parameters if p != "timesteps"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"the {name} schedule takes no parameter {', '.join(unknown)}; its parameters are {accepted}")
    betas = SCHEDULES[name](timesteps=timesteps, **kwargs)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    alpha_bar_T = float(torch.prod(1.0 - betas))
    if warn and alpha_bar_T > _TERMINAL_ALPHA_BAR_WARN:
        warnings.warn(
            f"{name} schedule with T={timesteps} leaves ᾱ_T={alpha_bar_T:.3g}: x_T still holds "
            f"{alpha_bar_T**0.5:.1%} of the image, so sampling from pure noise mismatches training. "
            "Raise T or beta_end, use the cosine schedule, or set zero_terminal_snr=true.",
            stacklevel=2,
        )
    return betas
