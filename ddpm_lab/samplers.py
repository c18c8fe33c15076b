"""Reverse-process samplers. Plain PyTorch.

A sampler picks the timesteps it visits and turns a denoiser's outputs into x_{t−1}; it never owns the
schedule, which comes from the :class:`~ddpm_lab.diffusion.GaussianDiffusion` it is given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator

import torch

from ddpm_lab.diffusion import Denoiser, GaussianDiffusion, SampleStep, posterior_coefficients, randn

__all__ = ["Sampler", "DDPMSampler", "SAMPLERS", "make_sampler", "space_timesteps"]

VARIANCES = ("fixed_small", "fixed_large")


def space_timesteps(num_timesteps: int, steps: int | None) -> list[int]:
    """``steps`` timesteps spread evenly over [0, T−1], ascending, always including 0 and T−1."""
    if steps is None or steps == num_timesteps:
        return list(range(num_timesteps))
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"sampler.steps must be in [1, T={num_timesteps}], got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    return sorted({round(i * (num_timesteps - 1) / (steps - 1)) for i in range(steps)})


def _batch_t(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


class Sampler(ABC):
    """Base class: ``timesteps`` says where the chain stops, ``steps`` walks it."""

    @abstractmethod
    def timesteps(self, num_timesteps: int) -> list[int]:
        """The timesteps the model is evaluated at, in the order visited (descending)."""

    @abstractmethod
    def steps(
        self, diffusion: GaussianDiffusion, model: Denoiser, x: torch.Tensor, generator: torch.Generator | None
    ) -> Iterator[SampleStep]:
        """Yield one :class:`SampleStep` per model evaluation, starting from x = x_T."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al., Alg. 2): x_{t−1} = μ̃_t(x_t, x̂_0) + σ_t z, no noise at the last step.

    Args:
        variance: ``fixed_small`` (σ² = β̃_t, the posterior variance) or ``fixed_large`` (σ² = β_t).
        clip_denoised: clip x̂_0 to [−1, 1] before forming the posterior mean.
        steps: visit only this many evenly spaced timesteps (Nichol & Dhariwal's respacing); ``None`` = all T.
    """

    def __init__(self, variance: str = "fixed_small", clip_denoised: bool = True, steps: int | None = None) -> None:
        if variance not in VARIANCES:
            raise ValueError(f"sampler.variance must be one of {VARIANCES}, got {variance!r}")
        if steps is not None and steps < 1:
            raise ValueError(f"sampler.steps must be >= 1 or null, got {steps}")
        self.variance = variance
        self.clip_denoised = clip_denoised
        self.steps_count = steps

    def timesteps(self, num_timesteps: int) -> list[int]:
        return space_timesteps(num_timesteps, self.steps_count)[::-1]

    def coefficients(self, diffusion: GaussianDiffusion) -> tuple[list[int], dict[str, torch.Tensor]]:
        """Posterior coefficients of the (possibly respaced) chain, indexed like ``timesteps``."""
        ts = self.timesteps(diffusion.num_timesteps)
        alpha_bar = diffusion.alphas_cumprod.cpu()
        t = torch.tensor(ts)
        prev = torch.cat([t[1:], t.new_tensor([-1])])
        ab_prev = torch.where(prev >= 0, alpha_bar[prev.clamp(min=0)], torch.ones((), dtype=alpha_bar.dtype))
        coef = posterior_coefficients(alpha_bar[t], ab_prev)
        coef["sigma2"] = coef["posterior_variance"] if self.variance == "fixed_small" else coef["beta"]
        return ts, coef

    @torch.no_grad()
    def steps(
        self, diffusion: GaussianDiffusion, model: Denoiser, x: torch.Tensor, generator: torch.Generator | None
    ) -> Iterator[SampleStep]:
        ts, coef = self.coefficients(diffusion)
        c1, c2, sigma = (coef["posterior_mean_coef1"], coef["posterior_mean_coef2"], coef["sigma2"].sqrt())
        for i, t in enumerate(ts):
            tt = _batch_t(t, x)
            x0 = diffusion.predict_x0(x, tt, model(x, tt).float())
            if self.clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
            x = c1[i].item() * x0 + c2[i].item() * x
            if i < len(ts) - 1:  # no noise on the final step
                x = x + sigma[i].item() * randn(x.shape, generator, x.device)
            yield SampleStep(t=t, x=x, x0_pred=x0)


SAMPLERS: dict[str, type[Sampler]] = {"ddpm": DDPMSampler}


def make_sampler(name: str, **kwargs) -> Sampler:
    """Build a sampler by name with the same parameters as ``configs/sampler/<name>.yaml``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](**kwargs)
