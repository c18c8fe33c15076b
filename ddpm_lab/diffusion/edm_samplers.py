"""EDM's σ-space samplers (Karras et al., 2022): Heun with optional churn, Euler (ancestral) and DPM-Solver++(2M)
on the Karras σ schedule. Plain PyTorch.

They integrate the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (eq. 1 with σ(t) = t, s = 1) from
x = σ_max·n down to σ = 0, calling only ``process.denoise(model, x, σ)``, so they sample an
:class:`~ddpm_lab.diffusion.EDMDiffusion` and a VP :class:`~ddpm_lab.diffusion.GaussianDiffusion` alike: for a
VP model each σ is first moved to the nearest σ_t = √((1 − ᾱ_t)/ᾱ_t) it was trained at (EDM's ``round_sigma``),
and its state is x_t/√ᾱ_t, so every network call is exact.

Every quantity of a step (the ODE slope, the ancestral mean) comes from the (clipped) D and x, never from the raw
output (see :mod:`ddpm_lab.diffusion.samplers`). A :class:`SampleStep` carries the state in VP scale,
x/√(1 + σ²) (the x_t a DDPM chain would hold there; pictures need no rescaling), and its ``t`` labels the step's
place on the σ ramp in units of the process's T: step i of N is t = round((T − 1)·(1 − i/(N − 1))), so the
strips' ``timesteps=[999, …, 0]`` pick steps as they do for DDPM chains (on a ``schedule=karras`` grid with the
sampler's σ range and ρ, t is also the grid index of the step's σ).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ddpm_lab.diffusion.core import Denoiser, Generator, SampleStep, SigmaProcess, randn
from ddpm_lab.diffusion.samplers import SAMPLERS, Sampler
from ddpm_lab.diffusion.schedules import check_sigma_range, karras_sigmas
from ddpm_lab.errors import ConfigError, check_number

__all__ = ["SigmaSampler", "EDMHeunSampler", "EDMEulerSampler", "EDMDPMSolverSampler"]


class SigmaSampler(Sampler):
    """Base of the σ-space samplers: the Karras σ schedule (eq. 5) of ``steps`` noise levels, then σ = 0.

    Args:
        steps: noise levels N of the schedule (network evaluations: N for Euler and DPM-Solver++, 2N − 1 for Heun).
        sigma_min, sigma_max: the schedule's ends (EDM's 0.002 and 80), clamped to the levels the process covers
            (``schedule.sigma_min``/``sigma_max`` of ``schedule=karras``; σ_0 and σ_{T−1} of a VP schedule), as
            EDM's sampler does for every model.
        rho: ρ of eq. 5 (7: EDM's; larger packs more steps near σ_min).
        clip_denoised: clip D(x; σ) to [−1, 1].
        dynamic_threshold: percentile of dynamic thresholding (replaces clipping); ``None`` = off.
    """

    def __init__(
        self,
        steps: int = 18,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        clip_denoised: bool = True,
        dynamic_threshold: float | None = None,
    ) -> None:
        self.num_steps = check_number(steps, "sampler.steps", int, low=1)
        self.sigma_min, self.sigma_max, self.rho = check_sigma_range(sigma_min, sigma_max, rho, "sampler")
        self._set_denoising(clip_denoised, dynamic_threshold)

    def sigmas(self, process: SigmaProcess) -> list[float]:
        """σ_0 > … > σ_{N−1} (each rounded to a level the process's network knows), then σ_N = 0."""
        covered = process.sigma_range()
        low, high = max(self.sigma_min, covered[0]), min(self.sigma_max, covered[1])
        if low >= high:
            raise ConfigError(
                f"sampler.sigma_min={self.sigma_min:g} and sampler.sigma_max={self.sigma_max:g} leave nothing of the "
                f"model's noise levels [{covered[0]:.3g}, {covered[1]:.3g}]: pick a range that overlaps them"
            )
        ramp = karras_sigmas(self.num_steps, low, high, self.rho).tolist()
        return [process.round_sigma(s) for s in ramp] + [0.0]

    def timesteps(self, num_timesteps: int) -> list[int]:
        """The label t of each step: its place on the σ ramp in units of T (module doc), descending."""
        n = self.num_steps
        return [round((num_timesteps - 1) * (1 - i / (n - 1))) if n > 1 else num_timesteps - 1 for i in range(n)]

    def _denoise(self, process: SigmaProcess, model: Denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.threshold(process.denoise(model, x, sigma))

    @torch.no_grad()
    def steps(
        self, diffusion: SigmaProcess, model: Denoiser, x: torch.Tensor, generator: Generator | None
    ) -> Iterator[SampleStep]:
        sigmas = self.sigmas(diffusion)
        labels = self.timesteps(diffusion.num_timesteps)
        x = x * sigmas[0]  # x_T ~ N(0, I) scaled to σ_max: the prior N(0, σ_max² I)
        state: dict[str, object] = {}  # what a multistep sampler keeps between the steps of this chain
        for i, label in enumerate(labels):
            x, x0 = self.step(diffusion, model, x, sigmas[i], sigmas[i + 1], state, generator)
            yield SampleStep(t=label, x=x / math.sqrt(1.0 + sigmas[i + 1] ** 2), x0_pred=x0)

    def step(
        self,
        process: SigmaProcess,
        model: Denoiser,
        x: torch.Tensor,
        sigma: float,
        sigma_next: float,
        state: dict[str, object],
        generator: Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x at ``sigma_next``, D(x; σ)) from x at ``sigma``; ``state`` is this chain's, kept between steps."""
        raise NotImplementedError


class EDMHeunSampler(SigmaSampler):
    """EDM's stochastic sampler (Karras et al., 2022, Alg. 2): Heun's second-order step of the ODE, with churn.

    With γ_i = min(S_churn/N, √2 − 1) for σ_i in [S_tmin, S_tmax] (else 0): σ̂ = σ_i(1 + γ_i),
    x̂ = x + √(σ̂² − σ_i²)·S_noise·ε; d = (x̂ − D(x̂; σ̂))/σ̂, x' = x̂ + (σ_{i+1} − σ̂)·d, and unless σ_{i+1} = 0 the
    correction x_{i+1} = x̂ + (σ_{i+1} − σ̂)·(d + d')/2 with d' = (x' − D(x'; σ_{i+1}))/σ_{i+1}. S_churn = 0 is the
    deterministic Heun sampler (Alg. 1): 2N − 1 network evaluations (EDM's CIFAR-10 setting: N = 18, 35 NFE).

    Args:
        steps, sigma_min, sigma_max, rho, clip_denoised, dynamic_threshold: see :class:`SigmaSampler`.
        s_churn: total churn S_churn (0: deterministic).
        s_tmin, s_tmax: the σ range that gets churn (``s_tmax=None``: no upper bound).
        s_noise: S_noise, the scale of the churn noise (slightly above 1 offsets D's loss of detail).
    """

    def __init__(
        self,
        steps: int = 18,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float | None = None,
        s_noise: float = 1.0,
        clip_denoised: bool = True,
        dynamic_threshold: float | None = None,
    ) -> None:
        super().__init__(steps, sigma_min, sigma_max, rho, clip_denoised, dynamic_threshold)
        self.s_churn = check_number(s_churn, "sampler.s_churn", float, low=0)
        self.s_tmin = check_number(s_tmin, "sampler.s_tmin", float, low=0)
        self.s_tmax = check_number(s_tmax, "sampler.s_tmax", float, low=0, optional=True)
        self.s_noise = check_number(s_noise, "sampler.s_noise", float, low=0)

    def nfe(self, num_timesteps: int) -> int:
        return 2 * self.num_steps - 1

    def step(self, process, model, x, sigma, sigma_next, state, generator):
        in_range = self.s_tmin <= sigma <= (math.inf if self.s_tmax is None else self.s_tmax)
        gamma = min(self.s_churn / self.num_steps, math.sqrt(2.0) - 1.0) if in_range else 0.0
        sigma_hat = process.round_sigma(sigma * (1.0 + gamma)) if gamma > 0 else sigma
        if sigma_hat > sigma:
            std = math.sqrt(sigma_hat**2 - sigma**2) * self.s_noise
            x = x + std * randn(x.shape, generator, x.device).to(x.dtype)
        x0 = self._denoise(process, model, x, sigma_hat)
        d = (x - x0) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next > 0:
            d_next = (x_next - self._denoise(process, model, x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
        return x_next, x0


class EDMEulerSampler(SigmaSampler):
    """Euler steps of the ODE with ancestral noise (k-diffusion's ``sample_euler_ancestral``).

    σ_up = min(σ_{i+1}, η·σ_{i+1}√(σ_i² − σ_{i+1}²)/σ_i), σ_down = √(σ_{i+1}² − σ_up²);
    x_{i+1} = x + (σ_down − σ_i)·(x − D)/σ_i + σ_up·ε. With η = 1 the mean is D + (σ_{i+1}/σ_i)²(x − D) and the
    variance σ_up², DDPM's posterior q(x_{i+1} | x_i, x_0 = D) in σ-space (ancestral sampling); η = 0 is the
    deterministic Euler step (= DDIM, diffusers' ``EDMEulerScheduler``). N network evaluations.

    Args:
        steps, sigma_min, sigma_max, rho, clip_denoised, dynamic_threshold: see :class:`SigmaSampler`.
        eta: η in [0, 1]: 1 ancestral, 0 deterministic.
    """

    def __init__(
        self,
        steps: int = 35,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        eta: float = 1.0,
        clip_denoised: bool = True,
        dynamic_threshold: float | None = None,
    ) -> None:
        super().__init__(steps, sigma_min, sigma_max, rho, clip_denoised, dynamic_threshold)
        self.eta = check_number(eta, "sampler.eta", float, 0, 1)

    def step(self, process, model, x, sigma, sigma_next, state, generator):
        x0 = self._denoise(process, model, x, sigma)
        sigma_up = min(sigma_next, self.eta * sigma_next * math.sqrt(max(sigma**2 - sigma_next**2, 0.0)) / sigma)
        sigma_down = math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0))
        x_next = x0 + (sigma_down / sigma) * (x - x0)  # = x + (σ_down − σ)·(x − D)/σ
        if sigma_up > 0:
            x_next = x_next + sigma_up * randn(x.shape, generator, x.device).to(x.dtype)
        return x_next, x0


class EDMDPMSolverSampler(SigmaSampler):
    """DPM-Solver++(2M) (Lu et al., 2022, Alg. 2) on the Karras σ schedule (k-diffusion's ``sample_dpmpp_2m``).

    In σ-space (α = 1) with λ = −log σ and h = λ_{i+1} − λ_i: x_{i+1} = (σ_{i+1}/σ_i)·x + (1 − σ_{i+1}/σ_i)·D',
    D' = D_i (the first step, and the last one, to σ = 0, which returns D) or
    D' = D_i + (h/(2h_{i−1}))·(D_i − D_{i−1}). N network evaluations (diffusers' ``EDMDPMSolverMultistepScheduler``
    with ``solver_order=2``).

    Args:
        steps, sigma_min, sigma_max, rho, clip_denoised, dynamic_threshold: see :class:`SigmaSampler`.
        order: 2 (2M) or 1 (= deterministic Euler).
    """

    def __init__(
        self,
        steps: int = 25,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        order: int = 2,
        clip_denoised: bool = True,
        dynamic_threshold: float | None = None,
    ) -> None:
        super().__init__(steps, sigma_min, sigma_max, rho, clip_denoised, dynamic_threshold)
        self.order = int(check_number(order, "sampler.order", int, 1, 2))

    def step(self, process, model, x, sigma, sigma_next, state, generator):
        x0 = self._denoise(process, model, x, sigma)
        if sigma_next == 0:
            return x0, x0
        h = math.log(sigma / sigma_next)
        d = x0
        previous = state.get("previous")  # (D_{i−1}, h_{i−1}); h_{i−1} = 0 where rounding repeated a σ
        if self.order == 2 and previous is not None and previous[1] > 0:
            x0_prev, h_prev = previous
            d = x0 + (h / (2.0 * h_prev)) * (x0 - x0_prev)
        state["previous"] = (x0, h)
        ratio = sigma_next / sigma
        return ratio * x + (1.0 - ratio) * d, x0


SAMPLERS.update(edm_heun=EDMHeunSampler, edm_euler=EDMEulerSampler, edm_dpm_solver=EDMDPMSolverSampler)
