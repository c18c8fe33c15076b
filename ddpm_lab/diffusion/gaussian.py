"""The Gaussian diffusion process of DDPM (Ho et al., 2020): forward noising, training loss, reverse steps.

Plain PyTorch: no Lightning, no Hydra. Timesteps are 0-based indices ``t ∈ {0, …, T−1}`` as in
diffusers, so ``betas[t]`` is β_{t+1} of the paper.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ddpm_lab.diffusion.core import (
    LOSS_WEIGHTINGS,
    PREDICTIONS,
    Denoiser,
    Prediction,
    SampleStep,
    extract,
    posterior_coefficients,
    randn,
)
from ddpm_lab.diffusion.samplers import DDPMSampler, Sampler
from ddpm_lab.errors import ConfigError, check_choice, check_number


class GaussianDiffusion(nn.Module):
    """Forward process q(x_t|x_0), its posterior, the model parameterization and the training loss.

    Args:
        betas: 1-D tensor of β_t, converted to float64 (see :func:`ddpm_lab.make_betas`).
        prediction: what the network predicts: ``eps`` (ε), ``x0`` or ``v`` (v = √ᾱ ε − √(1−ᾱ) x_0).
        loss_weighting: ``uniform`` (L_simple) or ``min_snr`` (Hang et al., 2023) with ``min_snr_gamma``.
    """

    def __init__(
        self,
        betas: torch.Tensor,
        prediction: Prediction = "eps",
        loss_weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
    ) -> None:
        super().__init__()
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ConfigError(
                "betas must be a non-empty 1-D tensor with every β_t in (0, 1]: check the schedule's parameters"
            )
        check_choice(prediction, "diffusion.prediction", PREDICTIONS)
        check_choice(loss_weighting, "diffusion.loss_weighting", LOSS_WEIGHTINGS)
        check_number(min_snr_gamma, "diffusion.min_snr_gamma", float, low=0, low_open=True)
        alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        if prediction == "eps" and float(alphas_cumprod[-1]) == 0.0:
            # x̂_0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ is 0/0 at ᾱ_T = 0: an ε-predictor cannot say anything about x_0 there.
            raise ConfigError(
                "prediction=eps cannot recover x0 at the last timestep of a zero-terminal-SNR schedule "
                "(alpha_bar_T = 0); "
                "use diffusion.prediction=v (Lin et al., 2023) or x0, or set schedule.zero_terminal_snr=false"
            )
        self.prediction = prediction
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.num_timesteps = int(betas.numel())

        alphas = 1.0 - betas
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        tables = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "log_one_minus_alphas_cumprod": torch.log1p(-alphas_cumprod),
            "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "snr": alphas_cumprod / (1.0 - alphas_cumprod),
        }
        post = posterior_coefficients(alphas_cumprod, alphas_cumprod_prev)
        tables.update({k: v for k, v in post.items() if k != "beta"})
        # β̃_0 = 0: its log borrows β̃_1, as in Ho et al.'s code.
        variance = post["posterior_variance"]
        tables["posterior_log_variance_clipped"] = torch.log(
            torch.cat([variance[1:2], variance[1:]]) if len(variance) > 1 else variance.clamp(min=1e-20)
        )
        # Derived from β alone, so not persisted in checkpoints; kept in float64 and cast at use.
        for name, value in tables.items():
            self.register_buffer(name, value, persistent=False)

    def extra_repr(self) -> str:
        return f"T={self.num_timesteps}, prediction={self.prediction}, loss_weighting={self.loss_weighting}"

    # ----------------------------------------------------------------------------------- forward process
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean √ᾱ_t x_0 and variance 1 − ᾱ_t of q(x_t | x_0)."""
        return extract(self.sqrt_alphas_cumprod, t, x0) * x0, extract(1.0 - self.alphas_cumprod, t, x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        noise = torch.randn_like(x0) if noise is None else noise
        return (
            extract(self.sqrt_alphas_cumprod, t, x0) * x0 + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean μ̃_t(x_t, x_0) and variance β̃_t of q(x_{t−1} | x_t, x_0)."""
        mean = extract(self.posterior_mean_coef1, t, x_t) * x0 + extract(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, extract(self.posterior_variance, t, x_t)

    # ----------------------------------------------------------------------------- parameterizations
    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho, 2022)."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x0) * noise - extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for this parameterization."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self.velocity(x0, noise, t)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """x̂_0 from the network output: eps → (x_t − √(1−ᾱ) ε̂)/√ᾱ; v → √ᾱ x_t − √(1−ᾱ) v̂."""
        if self.prediction == "eps":
            return (
                extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * output
            )
        if self.prediction == "x0":
            return output
        return (
            extract(self.sqrt_alphas_cumprod, t, x_t) * x_t
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * output
        )

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """ε̂ from the network output: x0 → (x_t − √ᾱ x̂_0)/√(1−ᾱ); v → √(1−ᾱ) x_t + √ᾱ v̂."""
        if self.prediction == "eps":
            return output
        if self.prediction == "v":
            return (
                extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
                + extract(self.sqrt_alphas_cumprod, t, x_t) * output
            )
        return (x_t - extract(self.sqrt_alphas_cumprod, t, x_t) * output) / extract(
            self.sqrt_one_minus_alphas_cumprod, t, x_t
        )

    # --------------------------------------------------------------------------------------- training
    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weights: 1 (L_simple) or min-SNR-γ, expressed for the parameterization's target."""
        if self.loss_weighting == "uniform":
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        snr = self.snr.to(t.device)[t]
        clipped = snr.clamp(max=self.min_snr_gamma)
        # eps: min(SNR, γ)/SNR written as min(1, γ/SNR), finite at SNR = 0.
        weight = {"eps": (self.min_snr_gamma / snr).clamp(max=1.0), "x0": clipped, "v": clipped / (snr + 1.0)}[
            self.prediction
        ]
        return weight.float()

    def sample_timesteps(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """t ~ Uniform{0, …, T−1}."""
        gen_device = generator.device if generator is not None else device
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=gen_device).to(device)

    def loss(
        self,
        model: Denoiser,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        reduction: Literal["mean", "none"] = "mean",
    ) -> torch.Tensor:
        """L_simple: ‖target − model(x_t, t)‖², weighted per sample, t uniform and ε ~ N(0, I) unless given."""
        t = self.sample_timesteps(x0.shape[0], x0.device) if t is None else t
        noise = torch.randn_like(x0) if noise is None else noise
        output = model(self.q_sample(x0, t, noise), t)
        per_sample = F.mse_loss(output.float(), self.target(x0, noise, t).float(), reduction="none").flatten(1).mean(1)
        per_sample = per_sample * self.loss_weights(t)
        return per_sample.mean() if reduction == "mean" else per_sample

    # --------------------------------------------------------------------------------------- sampling
    def sample_loop(
        self,
        model: Denoiser,
        shape: Iterable[int] | None = None,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        x_T: torch.Tensor | None = None,
    ) -> Iterator[SampleStep]:
        """Yield every reverse step from x_T ~ N(0, I) (or the given ``x_T``) down to x_0."""
        sampler, x_T = self._start(shape, sampler, generator, device, x_T)
        yield from sampler.steps(self, model, x_T, generator)

    def _start(
        self,
        shape: Iterable[int] | None,
        sampler: Sampler | None,
        generator: torch.Generator | None,
        device: torch.device | str | None,
        x_T: torch.Tensor | None,
    ) -> tuple[Sampler, torch.Tensor]:
        """The sampler to use (DDPM by default) and x_T on the target device."""
        if device is None:
            device = self.betas.device if x_T is None else x_T.device
        if x_T is None:
            if shape is None:
                raise ValueError("sample needs a shape or an x_T")
            x_T = randn(shape, generator, device)
        return (DDPMSampler() if sampler is None else sampler), x_T.to(device)

    @torch.no_grad()
    def sample(
        self,
        model: Denoiser,
        shape: Iterable[int] | None = None,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        x_T: torch.Tensor | None = None,
        keep: Iterable[int] | str | None = None,
        progress: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Generate samples with ``sampler`` (DDPM ancestral by default).

        ``keep``: timesteps whose x_t to hand back as well (``"all"`` for every step); x_t is the state
        *before* denoising step t, so ``keep=[T-1]`` returns x_T. With ``keep`` the result is
        ``(x_0, {t: x_t})`` on the CPU.
        """
        sampler, x_T = self._start(shape, sampler, generator, device, x_T)
        steps: Iterable[SampleStep] = self.sample_loop(model, sampler=sampler, generator=generator, x_T=x_T)
        if progress:
            steps = tqdm(steps, total=len(sampler.timesteps(self.num_timesteps)), desc="sampling", leave=False)
        keep_all = keep == "all"
        keep_set = set() if keep is None or keep_all else {int(k) for k in keep}  # type: ignore[union-attr]
        kept: dict[int, torch.Tensor] = {}
        x = x_T
        for step in steps:
            if keep_all or step.t in keep_set:
                kept[step.t] = x.detach().cpu()
            x = step.x
        return (x, kept) if keep is not None else x
