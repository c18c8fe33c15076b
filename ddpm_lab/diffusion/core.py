"""What the diffusion processes and the samplers share: the denoiser type, noise, coefficient helpers, one step.

Plain PyTorch. :class:`Process` says what a timestep sampler needs from a diffusion process and
:class:`SigmaProcess` what a σ-space (EDM) sampler needs, so samplers depend on this module and not on
:class:`~ddpm_lab.diffusion.gaussian.GaussianDiffusion` or :class:`~ddpm_lab.diffusion.edm.EDMDiffusion` themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS = ("eps", "x0", "v")
LOSS_WEIGHTINGS = ("uniform", "min_snr")
# fixed: σ² is the sampler's (β̃ or β); learned_range: the network interpolates log σ² (Nichol & Dhariwal, eq. 15).
VARIANCE_TYPES = ("fixed", "learned_range")
LOSS_TYPES = ("simple", "hybrid", "vlb")
# A denoiser: model(x_t, t) -> prediction, t an integer tensor of shape (batch,).
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def extract(table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gather ``table[t]`` (float64) and reshape to broadcast over ``x``, in ``x``'s dtype."""
    return table.to(x.device)[t.to(x.device)].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index``'s own random stream under ``seed``: a 64-bit hash of the pair, so streams of
    neighbouring images (or of ``seed`` and ``seed + 1``) share nothing."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(index)}".encode(), digest_size=8, person=b"ddpm_lab").digest()
    return int.from_bytes(digest, "little") >> 1  # torch seeds must fit in a signed 64-bit integer


class ImageNoise:
    """One CPU random stream per image: row ``k`` of every draw comes from image ``indices[k]``'s own generator
    (seeded by :func:`image_seed`), so an image's x_T and every noise its sampler adds depend only on
    ``(seed, index)``, never on which other images share its batch, device or process."""

    device = torch.device("cpu")

    def __init__(self, seed: int, indices: Sequence[int]) -> None:
        self.generators = [torch.Generator().manual_seed(image_seed(seed, i)) for i in indices]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """(len(self), *shape[1:]) standard normal noise on the CPU, one row per image stream."""
        shape = tuple(shape)
        if shape[0] != len(self.generators):
            raise ValueError(f"noise for {shape[0]} images asked of {len(self.generators)} image streams")
        out = torch.empty(shape)
        for row, generator in zip(out, self.generators):
            row.normal_(generator=generator)  # in place: no per-image allocation
        return out

    def integers(self, high: int) -> list[int]:
        """One random integer in [0, high) per image (e.g. per-image seeds for a noise sampler of diffusers)."""
        return [int(torch.randint(high, (1,), generator=g)) for g in self.generators]


Generator = torch.Generator | ImageNoise


def randn(shape: Iterable[int], generator: Generator | None, device: torch.device | str) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (per image for :class:`ImageNoise`), then moved:
    same numbers on every device."""
    if isinstance(generator, ImageNoise):
        return generator.randn(tuple(shape)).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device).to(device)


def split_output(diffusion: object, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prediction, v) of a network output: [prediction (C channels), v (C channels)] when the process learns its
    variance (``diffusion.learned_variance``), else (output, None)."""
    if not getattr(diffusion, "learned_variance", False):
        return output, None
    prediction, v = output.chunk(2, dim=1)
    return prediction, v


def interpolate_log_variance(
    v: torch.Tensor, min_log: torch.Tensor | float, max_log: torch.Tensor | float
) -> torch.Tensor:
    """log σ² = frac·log β + (1 − frac)·log β̃ with frac = (v + 1)/2 (Nichol & Dhariwal, eq. 15)."""
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def posterior_coefficients(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor) -> dict[str, torch.Tensor]:
    """Coefficients of q(x_prev | x_t, x_0) between two noise levels ᾱ_t < ᾱ_prev (Ho et al., eq. 6–7).

    With β = 1 − ᾱ_t/ᾱ_prev (the step's own β, also for respaced chains):
    β̃ = β(1 − ᾱ_prev)/(1 − ᾱ_t),  μ̃ = β√ᾱ_prev/(1 − ᾱ_t)·x_0 + (1 − ᾱ_prev)√(1 − β)/(1 − ᾱ_t)·x_t.
    """
    beta = 1.0 - alpha_bar / alpha_bar_prev
    return {
        "beta": beta,
        "posterior_variance": beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar),
        "posterior_mean_coef1": beta * alpha_bar_prev.sqrt() / (1.0 - alpha_bar),
        "posterior_mean_coef2": (1.0 - alpha_bar_prev) * (1.0 - beta).sqrt() / (1.0 - alpha_bar),
    }


@dataclass
class SampleStep:
    """One reverse step: the timestep just denoised, the new x (x_{t−1}) and the model's x̂_0 at t."""

    t: int
    x: torch.Tensor
    x0_pred: torch.Tensor


class Process(Protocol):
    """The part of a diffusion process that samplers use (``GaussianDiffusion`` is one)."""

    num_timesteps: int
    alphas_cumprod: torch.Tensor

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor: ...

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor: ...


class SigmaProcess(Protocol):
    """The part of a diffusion process that σ-space samplers (EDM's Heun, Euler, DPM-Solver++) use.

    States are x = x_0 + σ n, n ~ N(0, I) (Karras et al., 2022, eq. 1): a VP model's x_t is x/√(1 + σ²) with
    σ_t = √((1 − ᾱ_t)/ᾱ_t), so both ``GaussianDiffusion`` and ``EDMDiffusion`` are one.
    """

    num_timesteps: int

    def sigma_range(self) -> tuple[float, float]:
        """(σ_min, σ_max): the noise levels a chain covers by default."""
        ...

    def round_sigma(self, sigma: float) -> float:
        """The noise level the network is really evaluated at for ``sigma`` (a discrete model's nearest σ_t)."""
        ...

    def sigma_timestep(self, sigma: float) -> int:
        """The timestep of the schedule whose σ_t is nearest ``sigma`` (what a step at σ is labelled)."""
        ...

    def denoise(self, model: Callable[..., torch.Tensor], x: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x; σ) ≈ E[x_0 | x], from one call of ``model`` (the raw network, or a guidance wrapper of it)."""
        ...
