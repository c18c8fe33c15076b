"""EDM (Karras et al., 2022): continuous noise levels σ, the preconditioned denoiser and its training loss.

Plain PyTorch. Data are noised as x = x_0 + σ n, n ~ N(0, I), and the network F is wrapped as the denoiser
D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)) (Table 1, "Ours"):

    c_skip = σ_d²/(σ² + σ_d²),  c_out = σ·σ_d/√(σ² + σ_d²),  c_in = 1/√(σ² + σ_d²),  c_noise = ln(σ)/4,

so F's input and its training target both have unit variance at every σ. Training draws ln σ ~ N(P_mean, P_std²)
and weights ‖D − x_0‖² by λ(σ) = (σ² + σ_d²)/(σ·σ_d)² = 1/c_out², which makes the loss ‖F − F_target‖² with
F_target = (x_0 − c_skip·x)/c_out: unit weight on a unit-variance target.

The network is the same U-Net as DDPM's; its time input is c_noise (a float in about [−1.6, 1.1] for σ in
[0.002, 80]), fed to the sinusoidal embedding unscaled, as EDM feeds its DDPM++ and ADM networks and as diffusers'
EDM schedulers call a ``UNet2DModel``. The schedule (``schedule=karras``) gives the noise levels samplers cover
and the grid t = 0 … T−1 their steps are labelled on; training does not use it.

Samplers: the σ-space ones of :mod:`ddpm_lab.diffusion.edm_samplers` call :meth:`EDMDiffusion.denoise`; DDPM,
DDIM, DPM-Solver and diffusers' schedulers step a VP view of the schedule (ᾱ_t = 1/(1 + σ_t²)) whose x0-prediction
network is D at σ_t, exact at each of the T grid levels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lab.diffusion.core import Denoiser, Generator, SampleStep
from ddpm_lab.diffusion.edm_samplers import EDMHeunSampler, SigmaSampler
from ddpm_lab.diffusion.gaussian import GaussianDiffusion, run_chain
from ddpm_lab.diffusion.samplers import Sampler
from ddpm_lab.diffusion.schedules import karras_betas
from ddpm_lab.errors import ConfigError, check_number

# Quartiles of the standard normal: ln σ beyond P_mean + P_std·z splits the training σ's into four equal parts.
_QUARTILES = (-0.6744897501960817, 0.0, 0.6744897501960817)


class EDMDiffusion(nn.Module):
    """EDM's preconditioning, σ distribution and loss, plus sampling on the schedule's noise levels.

    Args:
        betas: the schedule whose σ_t = √((1 − ᾱ_t)/ᾱ_t) samplers cover and label their steps by
            (``make_betas("karras")``: σ from 0.002 to 80 on the ρ = 7 ramp, the default); training ignores it.
        sigma_data: σ_d, the standard deviation of the data (0.5 for images in [−1, 1]).
        p_mean, p_std: ln σ ~ N(p_mean, p_std²) during training (EDM: −1.2, 1.2).
    """

    learned_variance = False

    def __init__(
        self,
        betas: torch.Tensor | None = None,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
    ) -> None:
        super().__init__()
        self.sigma_data = check_number(sigma_data, "diffusion.sigma_data", float, low=0, low_open=True)
        self.p_mean = check_number(p_mean, "diffusion.p_mean", float)
        self.p_std = check_number(p_std, "diffusion.p_std", float, low=0, low_open=True)
        # The VP view of the schedule: what timestep samplers, strips and q_sample use (an x0-prediction process).
        self.vp = GaussianDiffusion(karras_betas() if betas is None else betas, prediction="x0")
        if not math.isfinite(float(self.vp.sqrt_recipm1_alphas_cumprod[-1])):
            raise ConfigError(
                "diffusion=edm needs a finite σ_max, but schedule.zero_terminal_snr=true makes σ_T infinite: "
                "set schedule.zero_terminal_snr=false (schedule=karras sets σ_max itself)"
            )
        self.num_timesteps = self.vp.num_timesteps

    def extra_repr(self) -> str:
        low, high = self.sigma_range()
        return (
            f"σ_data={self.sigma_data:g}, ln σ ~ N({self.p_mean:g}, {self.p_std:g}²), "
            f"σ in [{low:.3g}, {high:.3g}] on T={self.num_timesteps}"
        )

    # ------------------------------------------------------------------------------- preconditioning
    def preconditioning(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) of σ (Table 1): see the module doc."""
        sd2, s2 = self.sigma_data**2, sigma**2
        root = (s2 + sd2).sqrt()
        return sd2 / (s2 + sd2), sigma * self.sigma_data / root, 1.0 / root, sigma.log() / 4.0

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """λ(σ) = (σ² + σ_d²)/(σ·σ_d)² (eq. 8 with Table 1), = 1/c_out²."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def _sigma_batch(self, sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """σ as a (batch,) float64 tensor on x's device."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.to(torch.float64)

    def precondition(
        self, model: Denoiser, x: torch.Tensor, sigma: torch.Tensor | float, **inputs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(F(c_in·x; c_noise), c_skip, c_out), the coefficients shaped to broadcast over x in its dtype.
        ``inputs`` go to ``model`` unchanged (e.g. augmentation labels)."""
        c_skip, c_out, c_in, c_noise = self.preconditioning(self._sigma_batch(sigma, x))
        shape = (-1, *([1] * (x.ndim - 1)))
        c_skip, c_out, c_in = (c.to(x.dtype).view(shape) for c in (c_skip, c_out, c_in))
        return model(c_in * x, c_noise.float(), **inputs), c_skip, c_out

    def denoise(self, model: Denoiser, x: torch.Tensor, sigma: torch.Tensor | float, **inputs: Any) -> torch.Tensor:
        """D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise), σ a float or one per sample."""
        output, c_skip, c_out = self.precondition(model, x, sigma, **inputs)
        return c_skip * x + c_out * output.to(x.dtype)

    # -------------------------------------------------------------------------------------- training
    def sample_timesteps(
        self, batch: int, device: torch.device | str, generator: Generator | None = None
    ) -> torch.Tensor:
        """σ with ln σ ~ N(P_mean, P_std²) (EDM's training distribution), float32."""
        gen_device = generator.device if generator is not None else device
        z = torch.randn((batch,), generator=generator, device=gen_device).to(device)
        return (self.p_mean + self.p_std * z).exp()

    def training_timesteps(self, batch: int, device: torch.device | str) -> tuple[torch.Tensor, None]:
        """(σ, None): log-normal σ and no importance weights."""
        return self.sample_timesteps(batch, device), None

    def noise_quarter(self, t: torch.Tensor) -> torch.Tensor:
        """Which quarter of the training σ distribution each σ falls in (0: the least noisy quarter)."""
        edges = torch.tensor([self.p_mean + self.p_std * z for z in _QUARTILES], device=t.device)
        return torch.bucketize(t.log().float(), edges)

    def loss(
        self,
        model: Denoiser,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        reduction: Literal["mean", "none"] = "mean",
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """λ(σ)·‖D(x_0 + σn; σ) − x_0‖² per sample (eq. 8), computed as ‖F − F_target‖² (module doc).

        ``t``: the σ of each sample (log-normal unless given); ``noise``: n ~ N(0, I) unless given; ``weights``:
        per-sample factors (EDM draws no importance weights, but the training protocol passes them through).
        """
        sigma = self.sample_timesteps(x0.shape[0], x0.device) if t is None else t
        noise = torch.randn_like(x0) if noise is None else noise
        x = x0 + sigma.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1))) * noise
        output, c_skip, c_out = self.precondition(model, x, sigma)
        target = (x0 - c_skip * x) / c_out
        per_sample = F.mse_loss(output.float(), target.float(), reduction="none").flatten(1).mean(1)
        if weights is not None:
            per_sample = per_sample * weights
        return per_sample.mean() if reduction == "mean" else per_sample

    # -------------------------------------------------------------------------------- noise levels
    def sigma_range(self) -> tuple[float, float]:
        """(σ_min, σ_max) of the schedule: the range samplers cover by default."""
        return self.vp.sigma_range()

    def round_sigma(self, sigma: float) -> float:
        """σ itself: the network takes any noise level."""
        return float(sigma)

    def sigma_timestep(self, sigma: float) -> int:
        """The schedule's timestep whose σ_t is nearest ``sigma`` (the label of a step at σ)."""
        return self.vp.sigma_timestep(sigma)

    # ------------------------------------------------------------------------------------- VP view
    @property
    def betas(self) -> torch.Tensor:
        return self.vp.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.vp.alphas_cumprod

    def split_output(self, output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return output, None

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε on the schedule: (x_0 + σ_t ε)/√(1 + σ_t²)."""
        return self.vp.q_sample(x0, t, noise)

    def x0_model(self, model: Denoiser) -> Denoiser:
        """``model`` as the x0-prediction network of the VP view: (x_t, t) → D(x_t·√(1 + σ_t²); σ_t)."""
        sigmas = self.vp.sqrt_recipm1_alphas_cumprod

        def x0_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            sigma = sigmas.to(x_t.device)[t.to(x_t.device)]
            scale = (1.0 + sigma**2).sqrt().to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
            return self.denoise(model, x_t * scale, sigma)

        return x0_model

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """x̂_0 of the VP view: the output of :meth:`x0_model` is x̂_0 itself."""
        return output

    # --------------------------------------------------------------------------------------- sampling
    def default_sampler(self) -> Sampler:
        """What samples are drawn with when no sampler is given: EDM's deterministic Heun sampler, 18 levels."""
        return EDMHeunSampler()

    def sample_loop(
        self,
        model: Denoiser,
        shape: Iterable[int] | None = None,
        sampler: Sampler | None = None,
        generator: Generator | None = None,
        device: torch.device | str | None = None,
        x_T: torch.Tensor | None = None,
    ) -> Iterator[SampleStep]:
        """Yield every step from x_T ~ N(0, I) (or the given ``x_T``): a σ-space sampler (Heun with 18 levels by
        default) through :meth:`denoise`, any timestep sampler through the VP view."""
        sampler = self.default_sampler() if sampler is None else sampler
        if isinstance(sampler, SigmaSampler):
            sampler, x_T = self.vp._start(shape, sampler, generator, device, x_T)
            yield from sampler.steps(self, model, x_T, generator)
        else:
            yield from self.vp.sample_loop(self.x0_model(model), shape, sampler, generator, device, x_T)

    @torch.no_grad()
    def sample(
        self,
        model: Denoiser,
        shape: Iterable[int] | None = None,
        sampler: Sampler | None = None,
        generator: Generator | None = None,
        device: torch.device | str | None = None,
        x_T: torch.Tensor | None = None,
        keep: Iterable[int] | str | None = None,
        progress: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Generate samples (see :meth:`GaussianDiffusion.sample`; EDM's Heun sampler by default)."""
        sampler, x_T = self.vp._start(shape, sampler or self.default_sampler(), generator, device, x_T)
        steps = self.sample_loop(model, sampler=sampler, generator=generator, x_T=x_T)
        return run_chain(steps, x_T, keep, progress and len(sampler.visited(self)))


# Either process: what generate, the training module and load_model take and give.
DiffusionProcess = GaussianDiffusion | EDMDiffusion
