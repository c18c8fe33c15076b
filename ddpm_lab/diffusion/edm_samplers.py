"""EDM's σ-space samplers (Karras et al., 2022): Heun with optional churn, Euler (ancestral) and DPM-Solver++(2M)
on the Karras σ schedule. Plain PyTorch.

They integrate the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (eq. 1 with σ(t) = t, s = 1) from
x = σ_max·n down to σ = 0, calling only ``process.denoise(model, x, σ)``, so they sample an
:class:`~ddpm_lab.diffusion.EDMDiffusion` and a VP :class:`~ddpm_lab.diffusion.GaussianDiffusion` alike: for a
VP model each σ is first moved to the nearest σ_t = √((1 − ᾱ_t)/ᾱ_t) it was trained at (EDM's ``round_sigma``),
and its state is x_t/√ᾱ_t, so every network call is exact.

Every quantity of a step (the ODE slope, the ancestral mean) comes from the (clipped) D and x, never from the raw
output (see :mod:`ddpm_lab.diffusion.samplers`). As every sampler, they yield one :class:`SampleStep` per network
evaluation (Heun: two per level but the last), its ``t`` the timestep of the evaluated σ on the process's grid (a
VP model's own t; for EDM the nearest level of its schedule) and its ``x`` the state in VP scale, x/√(1 + σ²) (the
x_t a DDPM chain holds there: pictures need no rescaling). :meth:`SigmaSampler.visited` lists those t for a
process; ``timesteps(T)`` estimates them from T alone, as places on the σ ramp (exact for ``schedule=karras`` with
the sampler's own σ range and ρ, up to rounding).
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

    def evaluated(self, sigmas: list[float], process: SigmaProcess | None = None) -> list[float]:
        """The σ of each network evaluation of a chain over ``sigmas``: one per level (Heun overrides)."""
        return sigmas[:-1]

    def visited(self, process: SigmaProcess) -> list[int]:
        """The timestep label of each network evaluation on ``process`` (what the chain's SampleSteps carry)."""
        return [process.sigma_timestep(s) for s in self.evaluated(self.sigmas(process), process)]

    def timesteps(self, num_timesteps: int) -> list[int]:
        """An estimate of :meth:`visited` from T alone: each evaluated σ at its place on the sampler's own ρ-ramp,
        t = (T − 1)·(σ^(1/ρ) − σ_min^(1/ρ))/(σ_max^(1/ρ) − σ_min^(1/ρ)) rounded (level i of N: 1 − i/(N − 1))."""
        low, high = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        sigmas = karras_sigmas(self.num_steps, self.sigma_min, self.sigma_max, self.rho).tolist() + [0.0]
        places = [(s ** (1 / self.rho) - low) / (high - low) for s in self.evaluated(sigmas)]
        return [round((num_timesteps - 1) * min(max(p, 0.0), 1.0)) for p in places]

    def _denoise(self, process: SigmaProcess, model: Denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.threshold(process.denoise(model, x, sigma))

    @torch.no_grad()
    def steps(
        self, diffusion: SigmaProcess, model: Denoiser, x: torch.Tensor, generator: Generator | None
    ) -> Iterator[SampleStep]:
        sigmas = self.sigmas(diffusion)
        x = x * sigmas[0]  # x_T ~ N(0, I) scaled to σ_max: the prior N(0, σ_max² I)
        state: dict[str, object] = {}  # what a multistep sampler keeps between the steps of this chain
        for i in range(self.num_steps):
            scale = 1.0 / math.sqrt(1.0 + sigmas[i + 1] ** 2)
            for sigma, x_next, x0 in self.step(diffusion, model, x, sigmas[i], sigmas[i + 1], state, generator):
                yield SampleStep(t=diffusion.sigma_timestep(sigma), x=x_next * scale, x0_pred=x0)
            x = x_next

    def step(
        self,
        process: SigmaProcess,
        model: Denoiser,
        x: torch.Tensor,
        sigma: float,
        sigma_next: float,
        state: dict[str, object],
        generator: Generator | None,
    ) -> Iterator[tuple[float, torch.Tensor, torch.Tensor]]:
        """From x at ``sigma`` to ``sigma_next``: per network evaluation (σ evaluated at, x at ``sigma_next`` so
        far, D); the last x is the step's result. ``state`` is this chain's, kept between steps."""
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

    def churned(self, sigma: float, process: SigmaProcess | None) -> float:
        """σ̂ = σ(1 + γ) (rounded to the process's levels), γ = min(S_churn/N, √2 − 1) inside [S_tmin, S_tmax]."""
        in_range = self.s_tmin <= sigma <= (math.inf if self.s_tmax is None else self.s_tmax)
        gamma = min(self.s_churn / self.num_steps, math.sqrt(2.0) - 1.0) if in_range else 0.0
        if gamma == 0 or sigma == 0:
            return sigma
        return process.round_sigma(sigma * (1.0 + gamma)) if process is not None else sigma * (1.0 + gamma)

    def evaluated(self, sigmas, process=None):
        levels = []
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            levels += [self.churned(sigma, process)] + ([sigma_next] if sigma_next > 0 else [])
        return levels

    def step(self, process, model, x, sigma, sigma_next, state, generator):
        sigma_hat = max(self.churned(sigma, process), sigma)
        if sigma_hat > sigma:
            std = math.sqrt(sigma_hat**2 - sigma**2) * self.s_noise
            x = x + std * randn(x.shape, generator, x.device).to(x.dtype)
        x0 = self._denoise(process, model, x, sigma_hat)
        d = (x - x0) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        yield sigma_hat, x_next, x0
        if sigma_next > 0:
            x0_next = self._denoise(process, model, x_next, sigma_next)
            d_next = (x_next - x0_next) / sigma_next
            yield sigma_next, x + (sigma_next - sigma_hat) * 0.5 * (d + d_next), x0_next


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
        yield sigma, x_next, x0


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
            yield sigma, x0, x0
            return
        h = math.log(sigma / sigma_next)
        d = x0
        previous = state.get("previous")  # (D_{i−1}, h_{i−1}); h_{i−1} = 0 where rounding repeated a σ
        if self.order == 2 and previous is not None and previous[1] > 0:
            x0_prev, h_prev = previous
            d = x0 + (h / (2.0 * h_prev)) * (x0 - x0_prev)
        state["previous"] = (x0, h)
        ratio = sigma_next / sigma
        yield sigma, ratio * x + (1.0 - ratio) * d, x0


SAMPLERS.update(edm_heun=EDMHeunSampler, edm_euler=EDMEulerSampler, edm_dpm_solver=EDMDPMSolverSampler)
