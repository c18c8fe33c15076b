"""The Gaussian diffusion process of DDPM (Ho et al., 2020): forward noising, training loss, reverse steps.

Plain PyTorch: no Lightning, no Hydra. Timesteps are 0-based indices ``t ∈ {0, …, T−1}`` as in
diffusers, so ``betas[t]`` is β_{t+1} of the paper.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ddpm_lab.diffusion.core import (
    LOSS_TYPES,
    LOSS_WEIGHTINGS,
    PREDICTIONS,
    VARIANCE_TYPES,
    Denoiser,
    Generator,
    Prediction,
    SampleStep,
    extract,
    interpolate_log_variance,
    posterior_coefficients,
    randn,
    split_output,
)
from ddpm_lab.diffusion.importance import LossHistory
from ddpm_lab.diffusion.likelihood import (
    LOG2,
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    normal_kl,
)
from ddpm_lab.diffusion.samplers import VARIANCES, DDPMSampler, Sampler
from ddpm_lab.errors import ConfigError, check_choice, check_number


class GaussianDiffusion(nn.Module):
    """Forward process q(x_t|x_0), its posterior, the model parameterization and the training loss.

    Args:
        betas: 1-D tensor of β_t, converted to float64 (see :func:`ddpm_lab.make_betas`).
        prediction: what the network predicts: ``eps`` (ε), ``x0`` or ``v`` (v = √ᾱ ε − √(1−ᾱ) x_0).
        loss_weighting: ``uniform`` (L_simple) or ``min_snr`` (Hang et al., 2023) with ``min_snr_gamma``.
        variance: ``fixed`` (σ² of the sampler: β̃ or β) or ``learned_range``: the network outputs 2C channels,
            [prediction, v], and log σ² = frac·log β_t + (1 − frac)·log β̃_t, frac = (v + 1)/2 (Nichol & Dhariwal,
            2021, eq. 15).
        loss: ``simple`` (L_simple), ``hybrid`` (L_simple + λ·L_vlb with the mean's gradient stopped in L_vlb, so
            L_vlb trains only the variance; Nichol & Dhariwal, eq. 16) or ``vlb`` (L_vlb alone, training the mean
            too; with ``variance=fixed`` the bound uses σ² = β̃).
        vlb_weight: λ of ``hybrid``.
        importance_sampling: draw t for the loss from the loss history (Nichol & Dhariwal, §3.3) instead of
            uniformly, weighting each loss by 1/(T p_t); only with ``loss=vlb`` or ``hybrid``.
    """

    def __init__(
        self,
        betas: torch.Tensor,
        prediction: Prediction = "eps",
        loss_weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        variance: str = "fixed",
        loss: str = "simple",
        vlb_weight: float = 0.001,
        importance_sampling: bool = False,
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
        check_choice(variance, "diffusion.variance", VARIANCE_TYPES)
        check_choice(loss, "diffusion.loss", LOSS_TYPES)
        check_number(vlb_weight, "diffusion.vlb_weight", float, low=0, low_open=True)
        _check_loss(variance, loss, loss_weighting, bool(importance_sampling))
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
        self.variance, self.loss_type, self.vlb_weight = variance, loss, float(vlb_weight)
        self.num_timesteps = int(betas.numel())
        self.loss_history = LossHistory(self.num_timesteps) if importance_sampling else None

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
            "log_betas": torch.log(betas),
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
        text = f"T={self.num_timesteps}, prediction={self.prediction}, loss_weighting={self.loss_weighting}"
        if self.variance != "fixed" or self.loss_type != "simple":
            text += f", variance={self.variance}, loss={self.loss_type}"
        return text

    @property
    def learned_variance(self) -> bool:
        """Whether the network outputs [prediction, v] (2C channels) and σ² follows v."""
        return self.variance == "learned_range"

    def split_output(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prediction, v) of a network output; v is None for a fixed variance."""
        return split_output(self, output)

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

    def noise_quarter(self, t: torch.Tensor) -> torch.Tensor:
        """Which quarter of the training noise levels each t falls in: t in [0, T/4) → 0, …, [3T/4, T) → 3."""
        return (t * 4) // self.num_timesteps

    def sample_timesteps(
        self, batch: int, device: torch.device | str, generator: Generator | None = None
    ) -> torch.Tensor:
        """t ~ Uniform{0, …, T−1}."""
        gen_device = generator.device if generator is not None else device
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=gen_device).to(device)

    def training_timesteps(self, batch: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(t, weights) for a training step: uniform t and no weights, or with ``importance_sampling`` t drawn
        from the loss history and weights 1/(T p_t)."""
        if self.loss_history is None:
            return self.sample_timesteps(batch, device), None
        return self.loss_history.sample(batch, device)

    def loss(
        self,
        model: Denoiser,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        reduction: Literal["mean", "none"] = "mean",
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The training loss per ``loss``: L_simple = ‖target − prediction‖² (weighted per sample), + λ·T·L_t
        (``hybrid``, L_t in bits/dim with the mean's gradient stopped) or T·L_t alone (``vlb``); T·L_t is the
        one-sample estimate of L_vlb = Σ_t L_t. t uniform and ε ~ N(0, I) unless given.

        ``weights``: importance weights of t (from :meth:`training_timesteps`); given, the loss history is updated.
        """
        t = self.sample_timesteps(x0.shape[0], x0.device) if t is None else t
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, t)
        prediction, v = self.split_output(output)
        per_sample = (
            F.mse_loss(prediction.float(), self.target(x0, noise, t).float(), reduction="none").flatten(1).mean(1)
        )
        per_sample = per_sample * self.loss_weights(t)
        if self.loss_type != "simple":
            hybrid = self.loss_type == "hybrid"
            prediction = prediction.detach() if hybrid else prediction
            vlb = self.vlb_terms(prediction, v, x0, x_t, t) * self.num_timesteps
            if weights is not None and self.loss_history is not None:
                self.loss_history.update(t, vlb)
            per_sample = per_sample + self.vlb_weight * vlb if hybrid else vlb
        if weights is not None:
            per_sample = per_sample * weights
        return per_sample.mean() if reduction == "mean" else per_sample

    def x0_model(self, model: Denoiser) -> Denoiser:
        """``model`` as a network of x̂_0: (x_t, t) → x̂_0 (strips and pictures of what the model predicts)."""
        return lambda x_t, t: self.predict_x0(x_t, t, self.split_output(model(x_t, t))[0])

    # ------------------------------------------------------------------------ σ-space view (EDM samplers)
    def sigma_range(self) -> tuple[float, float]:
        """(σ_0, σ_{T−1}) with σ_t = √((1 − ᾱ_t)/ᾱ_t); a zero-terminal-SNR schedule's σ_{T−1} = ∞ gives way to
        its largest finite σ."""
        sigmas = self.sqrt_recipm1_alphas_cumprod
        finite = sigmas[torch.isfinite(sigmas)]
        return float(finite[0]), float(finite[-1])

    def sigma_timestep(self, sigma: float) -> int:
        """The timestep whose σ_t is nearest ``sigma`` in log σ (the network knows only these)."""
        log_sigmas = self.sqrt_recipm1_alphas_cumprod.cpu().log()
        finite = int(torch.isfinite(log_sigmas).sum())
        return int((log_sigmas[:finite] - math.log(max(sigma, 1e-300))).abs().argmin())

    def round_sigma(self, sigma: float) -> float:
        """The trained σ_t nearest ``sigma`` (EDM's ``round_sigma`` for discrete models); 0 stays 0."""
        return 0.0 if sigma == 0 else float(self.sqrt_recipm1_alphas_cumprod[self.sigma_timestep(sigma)])

    def denoise(self, model: Denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x; σ) = x̂_0 at the timestep of σ, the network fed x_t = √ᾱ_t x (x = x_0 + σ n; Karras et al.,
        2022, eq. 4 with s = √ᾱ): exact when σ is one of the σ_t (see :meth:`round_sigma`)."""
        t = torch.full((x.shape[0],), self.sigma_timestep(sigma), device=x.device, dtype=torch.long)
        x_t = x * extract(self.sqrt_alphas_cumprod, t, x)
        prediction, _ = self.split_output(model(x_t, t).to(x.dtype))
        return self.predict_x0(x_t, t, prediction)

    # ----------------------------------------------------------------------------------- the bound
    def model_log_variance(
        self, v: torch.Tensor | None, t: torch.Tensor, x: torch.Tensor, fixed: str = "fixed_small"
    ) -> torch.Tensor:
        """log σ_t² of p(x_{t−1}|x_t): interpolated from ``v`` (learned_range), else β̃_t (``fixed_small``) or β_t
        (``fixed_large``); at t = 0, β̃ borrows β̃_1 (as in Ho et al.'s and Nichol & Dhariwal's code)."""
        min_log = extract(self.posterior_log_variance_clipped, t, x)
        if v is not None:
            return interpolate_log_variance(v.to(x.dtype), min_log, extract(self.log_betas, t, x))
        check_choice(fixed, "variance", VARIANCES)
        if fixed == "fixed_small":
            return min_log.expand_as(x)
        return torch.where(t.view(-1, *([1] * (x.ndim - 1))) == 0, min_log, extract(self.log_betas, t, x)).expand_as(x)

    def p_mean_variance(
        self,
        prediction: torch.Tensor,
        v: torch.Tensor | None,
        x_t: torch.Tensor,
        t: torch.Tensor,
        fixed: str = "fixed_small",
        clip_denoised: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean μ̃_t(x_t, x̂_0) and log-variance of p(x_{t−1}|x_t) (Ho et al., eq. 7 and 11)."""
        x0 = self.predict_x0(x_t, t, prediction)
        x0 = x0.clamp(-1.0, 1.0) if clip_denoised else x0
        mean, _ = self.q_posterior(x0, x_t, t)
        return mean, self.model_log_variance(v, t, x_t, fixed)

    def vlb_terms(
        self,
        prediction: torch.Tensor,
        v: torch.Tensor | None,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        fixed: str = "fixed_small",
        clip_denoised: bool = False,
        discrete: bool = True,
    ) -> torch.Tensor:
        """L_t per sample in bits/dim: KL(q(x_{t−1}|x_t, x_0) ‖ p(x_{t−1}|x_t)) for t ≥ 1 and the decoder
        −log p(x_0|x_1) for t = 0: discretized over 256 bins (Ho et al., eq. 13), or a Gaussian density when
        ``discrete`` is False (continuous data)."""
        dtype = torch.promote_types(x0.dtype, torch.float32)  # float32 at least; float64 kept
        x0, x_t = x0.to(dtype), x_t.to(dtype)
        mean, log_var = self.p_mean_variance(prediction.to(dtype), v, x_t, t, fixed, clip_denoised)
        true_mean, _ = self.q_posterior(x0, x_t, t)
        true_log_var = extract(self.posterior_log_variance_clipped, t, x_t)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).mean(1)
        decoder = discretized_gaussian_log_likelihood if discrete else gaussian_log_likelihood
        nll = -decoder(x0, mean, log_var).flatten(1).mean(1)
        return torch.where(t == 0, nll, kl) / LOG2

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T|x_0) ‖ N(0, I)) per sample in bits/dim (no parameters: ≈ 0 for a good schedule)."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, dtype=torch.long, device=x0.device)
        mean, var = self.q_mean_variance(x0.float(), t)
        zero = torch.zeros_like(mean)
        return normal_kl(mean, torch.log(var).expand_as(mean), zero, zero).flatten(1).mean(1) / LOG2

    # --------------------------------------------------------------------------------------- sampling
    def default_sampler(self) -> Sampler:
        """What samples are drawn with when no sampler is given: DDPM's ancestral chain over all T steps."""
        return DDPMSampler()

    def sample_loop(
        self,
        model: Denoiser,
        shape: Iterable[int] | None = None,
        sampler: Sampler | None = None,
        generator: Generator | None = None,
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
        generator: Generator | None,
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
        return (self.default_sampler() if sampler is None else sampler), x_T.to(device)

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
        """Generate samples with ``sampler`` (DDPM ancestral by default).

        ``keep``: timesteps whose x_t to hand back as well (``"all"`` for every step); x_t is the state
        *before* denoising step t, so ``keep=[T-1]`` returns x_T. With ``keep`` the result is
        ``(x_0, {t: x_t})`` on the CPU.
        """
        sampler, x_T = self._start(shape, sampler, generator, device, x_T)
        steps = self.sample_loop(model, sampler=sampler, generator=generator, x_T=x_T)
        return run_chain(steps, x_T, keep, progress and len(sampler.visited(self)))


def run_chain(
    steps: Iterator[SampleStep],
    x_T: torch.Tensor,
    keep: Iterable[int] | str | None = None,
    progress: int | bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The last x of a chain's ``steps`` and, with ``keep``, ``{t: x_t}`` of the kept steps (x_t entering step t,
    on the CPU); ``progress``: a progress bar over that many steps."""
    if progress:
        steps = tqdm(steps, total=int(progress), desc="sampling", leave=False)
    keep_all = keep == "all"
    keep_set = set() if keep is None or keep_all else {int(k) for k in keep}  # type: ignore[union-attr]
    kept: dict[int, torch.Tensor] = {}
    x = x_T
    for step in steps:
        if keep_all or step.t in keep_set:
            kept[step.t] = x.detach().cpu()
        x = step.x
    return (x, kept) if keep is not None else x


def _check_loss(variance: str, loss: str, loss_weighting: str, importance_sampling: bool) -> None:
    """Combinations of variance, loss and t-sampling that would train nothing new or nothing at all."""
    if loss == "hybrid" and variance == "fixed":
        raise ConfigError(
            "diffusion.loss=hybrid stops L_vlb's gradient to the mean, so with diffusion.variance=fixed it trains "
            "exactly L_simple: set diffusion.variance=learned_range, or diffusion.loss=vlb (the bound trains the mean)"
        )
    if loss == "simple" and variance == "learned_range":
        raise ConfigError(
            "diffusion.variance=learned_range needs diffusion.loss=hybrid (or vlb): L_simple gives the variance "
            "channels no gradient"
        )
    if loss == "vlb" and loss_weighting != "uniform":
        raise ConfigError(
            f"diffusion.loss_weighting={loss_weighting} weights L_simple, which diffusion.loss=vlb does not use: "
            "set diffusion.loss_weighting=uniform or diffusion.loss=hybrid"
        )
    if importance_sampling and loss == "simple":
        raise ConfigError(
            "diffusion.importance_sampling=true samples t for L_vlb: set diffusion.loss=vlb (or hybrid), "
            "or diffusion.importance_sampling=false"
        )
