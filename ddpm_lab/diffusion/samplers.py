"""Reverse-process samplers: DDPM (ancestral), DDIM and DPM-Solver++(2M). Plain PyTorch.

A sampler picks the timesteps it visits and turns a denoiser's outputs into x_{t−1}; it never owns the
schedule, which comes from the process it is given (a :class:`~ddpm_lab.diffusion.GaussianDiffusion`). Every sampler
works on x̂_0 from ``diffusion.predict_x0``, so it handles eps, x0 and v networks.
Scalar coefficients are computed in float64 from the schedule and applied to x in its own dtype.

The rule every sampler follows (ours, ``sampler=diffusers``, and any new one): once x̂_0 is clipped or thresholded,
every other quantity of the step (ε̂, v̂, an ODE derivative) is derived from that x̂_0 and x_t, never taken from the
raw output. A guided output ε(∅) + w·(ε(c) − ε(∅)) extrapolates for w > 1, so x̂_0 leaves [−1, 1] and clipping
cuts its class direction back; the raw ε̂ still carries the extrapolated difference, which points the *other* way
(ε̂ − ε̂(∅) = −√(ᾱ/(1−ᾱ))·(x̂_0 − x̂_0(∅))), so a step mixing the two drives samples away from their class.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch

from ddpm_lab.diffusion.core import (
    Denoiser,
    Generator,
    Process,
    SampleStep,
    interpolate_log_variance,
    posterior_coefficients,
    randn,
    split_output,
)
from ddpm_lab.diffusion.spacing import SPACINGS, space_timesteps
from ddpm_lab.errors import ConfigError, check_choice, check_number

__all__ = [
    "Sampler",
    "DDPMSampler",
    "DDIMSampler",
    "DPMSolverSampler",
    "SAMPLERS",
    "make_sampler",
    "space_timesteps",
    "dynamic_threshold",
]

VARIANCES = ("fixed_small", "fixed_large")


def dynamic_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Saharia et al. (2022): s = max(1, p-th percentile of |x̂_0|) per sample, then x̂_0 ← clip(x̂_0, −s, s)/s."""
    flat = x0.abs().flatten(1)
    flat = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()  # quantile needs float32/64
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0).to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def _batch_t(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def _alpha_bar(diffusion: Process, t: int) -> float:
    """ᾱ_t as a Python float (float64); t < 0 is the data itself, ᾱ = 1."""
    return 1.0 if t < 0 else float(diffusion.alphas_cumprod[t])


class Sampler(ABC):
    """Base class: ``timesteps`` says where the model is evaluated, ``steps`` walks the chain.

    ``clip_denoised`` clips x̂_0 to [−1, 1]; ``dynamic_threshold`` (a percentile p in (0, 1), e.g. 0.995) applies
    Saharia et al.'s dynamic thresholding instead and takes precedence over clipping.
    """

    clip_denoised: bool = False
    dynamic_threshold: float | None = None

    def _set_denoising(self, clip_denoised: bool, dynamic_threshold: float | None) -> None:
        check_number(
            dynamic_threshold, "sampler.dynamic_threshold", float, 0, 1, low_open=True, high_open=True, optional=True
        )
        self.clip_denoised = bool(clip_denoised)
        self.dynamic_threshold = dynamic_threshold

    def denoised(self, diffusion: Process, x: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """x̂_0 from the network output, thresholded or clipped as configured."""
        return self.threshold(diffusion.predict_x0(x, t, output))

    def threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """x̂_0 thresholded (``dynamic_threshold``) or clipped to [−1, 1] (``clip_denoised``) as configured."""
        if self.dynamic_threshold is not None:
            return dynamic_threshold(x0, self.dynamic_threshold)
        return x0.clamp(-1.0, 1.0) if self.clip_denoised else x0

    @property
    def changes_x0(self) -> bool:
        """Whether :meth:`denoised` may change x̂_0 (clipping or thresholding is on)."""
        return self.clip_denoised or self.dynamic_threshold is not None

    @abstractmethod
    def timesteps(self, num_timesteps: int) -> list[int]:
        """The timesteps the model is evaluated at, in the order visited (descending)."""

    def visited(self, process: Process) -> list[int]:
        """The timestep of each network evaluation on ``process``, as the chain's SampleSteps carry them: its
        :meth:`timesteps` (a σ-space sampler's depend on the process's noise levels)."""
        return self.timesteps(process.num_timesteps)

    @abstractmethod
    def steps(
        self, diffusion: Process, model: Denoiser, x: torch.Tensor, generator: Generator | None
    ) -> Iterator[SampleStep]:
        """Yield one :class:`SampleStep` per model evaluation, starting from x = x_T."""

    @property
    def options(self) -> dict[str, object]:
        """The constructor's keyword arguments: ``make_sampler(name, **sampler.options)`` rebuilds it."""
        names = inspect.signature(type(self)).parameters
        return {p: getattr(self, "num_steps" if p == "steps" else p) for p in names}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"


class _SingleStepSampler(Sampler):
    """A sampler whose update from t to the next visited timestep needs only the model output at t."""

    @abstractmethod
    def step(
        self,
        diffusion: Process,
        output: torch.Tensor,
        t: int,
        x: torch.Tensor,
        t_prev: int,
        noise: torch.Tensor | None = None,
        generator: Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x at ``t_prev``, x̂_0) from the model ``output`` at ``t``; ``t_prev = −1`` is the final step.

        Fresh noise is ``noise`` if given, else drawn from ``generator`` (only when the step adds any).
        """

    @torch.no_grad()
    def steps(
        self, diffusion: Process, model: Denoiser, x: torch.Tensor, generator: Generator | None
    ) -> Iterator[SampleStep]:
        ts = self.timesteps(diffusion.num_timesteps)
        for t, t_prev in zip(ts, ts[1:] + [-1]):
            output = model(x, _batch_t(t, x)).to(x.dtype)
            x, x0 = self.step(diffusion, output, t, x, t_prev, generator=generator)
            yield SampleStep(t=t, x=x, x0_pred=x0)

    @staticmethod
    def _add_noise(
        x: torch.Tensor, std: float, noise: torch.Tensor | None, generator: Generator | None
    ) -> torch.Tensor:
        if std == 0.0:
            return x
        noise = randn(x.shape, generator, x.device) if noise is None else noise
        return x + std * noise.to(x.dtype)


class DDPMSampler(_SingleStepSampler):
    """Ancestral sampling (Ho et al., Alg. 2): x_{t−1} = μ̃_t(x_t, x̂_0) + σ_t z, no noise at the last step.

    A process with a learned variance (``diffusion.variance=learned_range``) sets σ² from the network's v instead,
    between the step's own β̃ and β (recomputed from ᾱ for respaced chains; Nichol & Dhariwal, eq. 15 and §4).

    Args:
        variance: ``fixed_small`` (σ² = β̃_t, the posterior variance) or ``fixed_large`` (σ² = β_t); not used when the
            process learns its variance.
        clip_denoised: clip x̂_0 to [−1, 1] before forming the posterior mean.
        dynamic_threshold: percentile of Saharia et al.'s dynamic thresholding (replaces clipping); ``None`` = off.
        steps: visit only this many timesteps (Nichol & Dhariwal's respacing, β of each step recomputed from
            ᾱ); ``None`` = all T.
        spacing: how respaced timesteps are chosen: ``linspace``, ``leading``, ``trailing`` or ``quadratic``.
    """

    def __init__(
        self,
        variance: str = "fixed_small",
        clip_denoised: bool = True,
        dynamic_threshold: float | None = None,
        steps: int | None = None,
        spacing: str = "linspace",
    ) -> None:
        self.variance = check_choice(variance, "sampler.variance", VARIANCES)
        self._set_denoising(clip_denoised, dynamic_threshold)
        self.num_steps = check_number(steps, "sampler.steps", int, low=1, optional=True)
        check_choice(spacing, "sampler.spacing", SPACINGS)
        self.spacing = spacing

    def timesteps(self, num_timesteps: int) -> list[int]:
        return space_timesteps(num_timesteps, self.num_steps, self.spacing)[::-1]

    def step(self, diffusion, output, t, x, t_prev, noise=None, generator=None):
        """x_prev = μ̃(x_t, x̂_0) + σ z between ᾱ_t and ᾱ_prev (Ho et al., eq. 7), σ² = β̃ or β, or learned."""
        output, v = split_output(diffusion, output)
        x0 = self.denoised(diffusion, x, _batch_t(t, x), output)
        coef = posterior_coefficients(
            *torch.tensor([_alpha_bar(diffusion, t), _alpha_bar(diffusion, t_prev)], dtype=torch.float64)
        )
        x_prev = coef["posterior_mean_coef1"].item() * x0 + coef["posterior_mean_coef2"].item() * x
        if t_prev < 0:  # no noise on the final step
            return x_prev, x0
        if v is not None:
            log_var = interpolate_log_variance(
                v.to(x.dtype), math.log(coef["posterior_variance"].item()), math.log(coef["beta"].item())
            )
            noise = randn(x.shape, generator, x.device) if noise is None else noise
            return x_prev + torch.exp(0.5 * log_var) * noise.to(x.dtype), x0
        var = coef["posterior_variance"] if self.variance == "fixed_small" else coef["beta"]
        return self._add_noise(x_prev, math.sqrt(var.item()), noise, generator), x0


class DDIMSampler(_SingleStepSampler):
    """DDIM (Song et al., 2021, eq. 12): x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z,
    σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev); η = 0 is deterministic, η = 1 is DDPM-like.

    ε̂ is the one the (clipped) x̂_0 implies, ε̂ = (x_t − √ᾱ_t x̂_0)/√(1 − ᾱ_t) (GLIDE; diffusers'
    ``use_clipped_model_output=True``): with the network's own ε̂ beside a clipped x̂_0, guidance at w > 1 pushes
    samples away from their class (see the module doc). Without clipping the two are the same. The step after the
    last visited timestep goes to ᾱ = 1 (``set_alpha_to_one``) or to ᾱ_0.

    Args:
        steps: number of model evaluations.
        eta: η in [0, 1].
        spacing: ``linspace``, ``leading``, ``trailing`` or ``quadratic`` (DDIM's CIFAR-10 setting; only ``trailing``
            starts at t = T−1).
        clip_denoised: clip x̂_0 to [−1, 1].
        dynamic_threshold: percentile of dynamic thresholding (replaces clipping); ``None`` = off.
        set_alpha_to_one: final step to ᾱ = 1 (clean data) rather than to ᾱ_0.
    """

    def __init__(
        self,
        steps: int = 50,
        eta: float = 0.0,
        spacing: str = "trailing",
        clip_denoised: bool = True,
        dynamic_threshold: float | None = None,
        set_alpha_to_one: bool = True,
    ) -> None:
        self.num_steps = check_number(steps, "sampler.steps", int, low=1)
        self.eta = check_number(eta, "sampler.eta", float, 0, 1)
        check_choice(spacing, "sampler.spacing", SPACINGS)
        self.spacing = spacing
        self._set_denoising(clip_denoised, dynamic_threshold)
        self.set_alpha_to_one = bool(set_alpha_to_one)

    def timesteps(self, num_timesteps: int) -> list[int]:
        return space_timesteps(num_timesteps, self.num_steps, self.spacing)[::-1]

    def step(self, diffusion, output, t, x, t_prev, noise=None, generator=None):
        output, _ = split_output(diffusion, output)  # a learned variance is not used (Nichol & Dhariwal, §4)
        tt = _batch_t(t, x)
        x0 = self.denoised(diffusion, x, tt, output)
        a_t = _alpha_bar(diffusion, t)
        if self.changes_x0:  # ε̂ of the clipped x̂_0: one consistent pair (module doc)
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1.0 - a_t)
        else:
            eps = diffusion.predict_eps(x, tt, output)
        a_prev = _alpha_bar(diffusion, t_prev if t_prev >= 0 or self.set_alpha_to_one else 0)
        std = self.eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
        x_prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1.0 - a_prev - std**2, 0.0)) * eps
        return self._add_noise(x_prev, std, noise, generator), x0


class DPMSolverSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al., 2022, Alg. 2): a multistep solver of the diffusion ODE in data prediction.

    With α = √ᾱ, σ = √(1 − ᾱ), λ = log(α/σ) and h = λ_t − λ_s, one step from s to t is
    x_t = (σ_t/σ_s) x_s + (α_t − α_s σ_t/σ_s) D  (= (σ_t/σ_s) x_s − α_t(e^{−h} − 1) D),
    with D = x̂_0(s) (first order) or D = x̂_0(s) + (h/2h_prev)(x̂_0(s) − x̂_0(s_prev)) (second order).
    As diffusers' defaults: the first step is first order, the last step goes to σ = 0 (returns x̂_0) in first
    order, and ``linspace``/``leading`` spread ``steps + 1`` points over [0, T−1] and skip t = 0.

    Args:
        steps: number of model evaluations (10–20 give good samples).
        order: 2 (2M) or 1 (equivalent to deterministic DDIM).
        spacing: ``linspace``, ``leading``, ``trailing`` or ``quadratic``.
        clip_denoised: clip x̂_0 to [−1, 1]. On by default: with a trained network, x̂_0 at t ≈ T is
            ε-error / √ᾱ_T (×2·10⁴ for the cosine schedule), which an unclipped first step carries into every image.
        dynamic_threshold: percentile of dynamic thresholding (replaces clipping); ``None`` = off.
    """

    def __init__(
        self,
        steps: int = 20,
        order: int = 2,
        spacing: str = "linspace",
        clip_denoised: bool = True,
        dynamic_threshold: float | None = None,
    ) -> None:
        self.num_steps = check_number(steps, "sampler.steps", int, low=1)
        self.order = int(check_choice(order, "sampler.order", (1, 2)))
        check_choice(spacing, "sampler.spacing", SPACINGS)
        self.spacing = spacing
        self._set_denoising(clip_denoised, dynamic_threshold)

    def timesteps(self, num_timesteps: int) -> list[int]:
        if self.spacing == "trailing":
            return space_timesteps(num_timesteps, self.num_steps, "trailing")[::-1]
        if self.num_steps >= num_timesteps:
            raise ConfigError(
                f"sampler.steps must be < T={num_timesteps} for {self.spacing} spacing, got {self.num_steps}"
            )
        return space_timesteps(num_timesteps, self.num_steps + 1, self.spacing)[:0:-1]

    @torch.no_grad()
    def steps(
        self, diffusion: Process, model: Denoiser, x: torch.Tensor, generator: Generator | None
    ) -> Iterator[SampleStep]:
        ts = self.timesteps(diffusion.num_timesteps)
        alpha_bar = torch.tensor([_alpha_bar(diffusion, t) for t in ts] + [1.0], dtype=torch.float64)
        alpha, sigma = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
        lam = alpha.log() - sigma.log()  # −inf where ᾱ = 0 (zero terminal SNR), +inf at the final σ = 0
        x0_prev = None
        for i, t in enumerate(ts):
            tt = _batch_t(t, x)
            prediction, _ = split_output(diffusion, model(x, tt).to(x.dtype))  # the mean only, as DDIM
            x0 = self.denoised(diffusion, x, tt, prediction)
            d = x0
            if self.order == 2 and x0_prev is not None and i < len(ts) - 1:
                # h/h_prev is 0 when the previous step started at λ = −inf: the correction vanishes.
                ratio = ((lam[i + 1] - lam[i]) / (lam[i] - lam[i - 1])).item()
                d = x0 + (0.5 * ratio) * (x0 - x0_prev)
            s_ratio = (sigma[i + 1] / sigma[i]).item()
            x = s_ratio * x + (alpha[i + 1] - alpha[i] * s_ratio).item() * d
            x0_prev = x0
            yield SampleStep(t=t, x=x, x0_pred=x0)


SAMPLERS: dict[str, type[Sampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "dpm_solver": DPMSolverSampler}


def make_sampler(name: str, **kwargs) -> Sampler:
    """Build a sampler by name with the same parameters as ``configs/sampler/<name>.yaml``."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    accepted = list(inspect.signature(SAMPLERS[name]).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"sampler {name!r} takes no option {', '.join(unknown)}; its options are {accepted}")
    return SAMPLERS[name](**kwargs)
