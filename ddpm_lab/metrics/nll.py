"""The negative log-likelihood bound of a trained model on a set of real 8-bit images, in bits/dim (Ho et al.,
2020, eq. 5 and 13; Nichol & Dhariwal, 2021, §3): L_T + Σ L_t + L_0 averaged over images. Plain PyTorch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ddpm_lab.diffusion import Denoiser, DiffusionProcess, GaussianDiffusion, Sampler, variational_bound
from ddpm_lab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class NLLResult:
    """The bound and its parts, mean bits/dim over ``n_images``; ``per_t`` the mean L_t at each of ``timesteps``."""

    bpd: float
    prior: float
    terms: float
    decoder: float
    n_images: int
    num_timesteps: int
    stride: int
    timesteps: list[int]
    per_t: list[float]

    @property
    def estimator(self) -> str:
        """How Σ L_t was obtained: exactly (all T − 1 terms) or from every stride-th term, scaled up."""
        if self.stride == 1:
            return f"exact sum of all {self.num_timesteps - 1} L_t terms (one x_t per image and t)"
        return (
            f"approximate: every {self.stride}th L_t ({len(self.timesteps)} of {self.num_timesteps - 1}), "
            "their sum scaled by (T-1)/count"
        )

    def line(self) -> str:
        return (
            f"NLL bound {self.bpd:.4f} bits/dim on {self.n_images} images "
            f"(L_T prior {self.prior:.2e} + sum L_t {self.terms:.4f} + L_0 decoder {self.decoder:.4f}; "
            f"{self.estimator})"
        )

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "estimator": self.estimator}


def images_bound(
    net: Denoiser,
    diffusion: GaussianDiffusion,
    images: torch.Tensor,
    batch_size: int = 100,
    stride: int = 1,
    seed: int = 0,
    fixed: str = "fixed_small",
    clip_denoised: bool = True,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> NLLResult:
    """The bound on uint8 ``images`` (N, C, H, W), in batches; noise from one CPU generator seeded ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    totals = {"bpd": 0.0, "prior": 0.0, "terms": 0.0, "decoder": 0.0}
    per_t: torch.Tensor | None = None
    timesteps: list[int] = []
    for start in range(0, len(images), batch_size):
        x0 = images[start : start + batch_size].to(device).float() / 127.5 - 1.0
        bound = variational_bound(net, diffusion, x0, stride, generator, fixed, clip_denoised)
        for key, value in (
            ("bpd", bound.total),
            ("prior", bound.prior),
            ("terms", bound.terms_sum),
            ("decoder", bound.decoder),
        ):
            totals[key] += value.sum().item()
        sums = bound.terms.sum(0).double().cpu()
        per_t = sums if per_t is None else per_t + sums
        timesteps = bound.timesteps
        if progress is not None:
            progress(start + len(x0))
    n = len(images)
    return NLLResult(
        **{k: v / n for k, v in totals.items()},
        n_images=n,
        num_timesteps=diffusion.num_timesteps,
        stride=int(stride),
        timesteps=timesteps,
        per_t=(per_t / n).tolist() if per_t is not None else [],
    )


@dataclass(frozen=True)
class NLLSettings:
    """``evaluate metrics=nll``: ``n`` test images (None: all), every ``stride``-th L_t, x̂_0 clipped to [−1, 1] in
    every p(x_{t−1}|x_t) or not, and σ² of a fixed-variance model (None: that of its sampler)."""

    n: int | None
    stride: int
    clip_denoised: bool
    variance: str | None


def check_bounded(diffusion: DiffusionProcess, where: object) -> GaussianDiffusion:
    """``diffusion`` itself when it has DDPM's variational bound; one ConfigError line for an EDM model."""
    if not isinstance(diffusion, GaussianDiffusion):
        raise ConfigError(
            f"metrics=nll bounds DDPM's likelihood, but {where} is an EDM model (diffusion=edm), "
            "which has no such bound: use metrics=fid"
        )
    return diffusion


def model_bound(
    net: Denoiser,
    diffusion: DiffusionProcess,
    sampler: Sampler,
    images: torch.Tensor,
    settings: NLLSettings,
    batch_size: int,
    seed: int,
    device: torch.device | str,
) -> tuple[NLLResult, str]:
    """:func:`images_bound` of a trained model under ``settings``, and the variance it used (``learned_range`` for a
    learned one, else ``settings.variance`` or the sampler's, ``fixed_small`` when it has none)."""
    diffusion = check_bounded(diffusion, "this model")
    fixed = settings.variance or getattr(sampler, "variance", "fixed_small")
    variance = "learned_range" if diffusion.learned_variance else fixed
    log.info("bounding the NLL of %d test images (variance %s, stride %d)", len(images), variance, settings.stride)
    result = images_bound(
        net,
        diffusion,
        images,
        batch_size,
        settings.stride,
        seed,
        fixed,
        settings.clip_denoised,
        device,
        progress=lambda done: log.info("bounded %d / %d", done, len(images)),
    )
    return result, variance
