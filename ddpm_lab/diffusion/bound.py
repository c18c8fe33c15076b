"""The variational bound of a trained model on images, term by term, in bits/dim (Ho et al., 2020, eq. 5;
Nichol & Dhariwal, 2021, eq. 4–6 and Fig. 2). Plain PyTorch.

−log p(x_0) ≤ L_T + Σ_{t=1}^{T−1} L_t + L_0 with (0-based t as everywhere in ddpm_lab) L_T = KL(q(x_T|x_0) ‖
N(0, I)), L_t = KL(q(x_{t−1}|x_t, x_0) ‖ p(x_{t−1}|x_t)) at one x_t ~ q(x_t|x_0), and the decoder L_0 = −log p(x_0|x_1).
With ``stride`` k > 1 only every k-th L_t is evaluated and their sum scaled by (T − 1)/(number evaluated): an
approximate (Riemann-sum) estimate of Σ L_t; L_T and L_0 are always exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpm_lab.diffusion.core import Denoiser, randn
from ddpm_lab.diffusion.gaussian import GaussianDiffusion
from ddpm_lab.errors import check_number


@dataclass
class BoundTerms:
    """Per-image terms in bits/dim: ``prior`` L_T, ``decoder`` L_0 and ``terms[:, i]`` = L_t at ``timesteps[i]``."""

    timesteps: list[int]
    terms: torch.Tensor
    prior: torch.Tensor
    decoder: torch.Tensor
    scale: float

    @property
    def terms_sum(self) -> torch.Tensor:
        """Σ_{t=1}^{T−1} L_t per image (scaled up from the evaluated ones when ``stride`` > 1)."""
        return self.terms.sum(1) * self.scale

    @property
    def total(self) -> torch.Tensor:
        """The bound per image, bits/dim: L_T + Σ L_t + L_0."""
        return self.prior + self.terms_sum + self.decoder


def bound_timesteps(num_timesteps: int, stride: int = 1) -> list[int]:
    """The t ≥ 1 whose L_t are evaluated: 1, 1 + k, 1 + 2k, … < T."""
    check_number(stride, "stride", int, low=1)
    return list(range(1, num_timesteps, stride))


@torch.no_grad()
def variational_bound(
    model: Denoiser,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    stride: int = 1,
    generator: torch.Generator | None = None,
    fixed: str = "fixed_small",
    clip_denoised: bool = True,
    discrete: bool = True,
) -> BoundTerms:
    """Every term of the bound for a batch ``x0`` in [−1, 1], one model call per evaluated t.

    ``fixed``: σ² of a fixed-variance model (``fixed_small`` β̃ or ``fixed_large`` β); a learned variance is
    read from the network. ``discrete``: the decoder is the discretized Gaussian of 8-bit images (Ho et al.,
    eq. 13); False uses a Gaussian density (continuous data). Noise is drawn from ``generator``.
    """
    timesteps = bound_timesteps(diffusion.num_timesteps, stride)

    def term(t: int) -> torch.Tensor:
        tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        x_t = diffusion.q_sample(x0, tt, randn(x0.shape, generator, x0.device).to(x0.dtype))
        prediction, v = diffusion.split_output(model(x_t, tt))
        return diffusion.vlb_terms(prediction, v, x0, x_t, tt, fixed, clip_denoised, discrete)

    terms = torch.stack([term(t) for t in timesteps], 1) if timesteps else x0.new_zeros(x0.shape[0], 0)
    scale = (diffusion.num_timesteps - 1) / len(timesteps) if timesteps else 0.0
    return BoundTerms(timesteps, terms, diffusion.prior_bpd(x0), term(0), scale)
