"""The pieces of DDPM's variational bound (Ho et al., 2020, eq. 5 and 13; Nichol & Dhariwal, 2021, §2.1).

Plain PyTorch, elementwise, in nats: the KL divergence of two diagonal Gaussians (each L_t term), the
discretized Gaussian log-likelihood of 8-bit images in [−1, 1] (the decoder term L_0), its continuous
counterpart (for continuous data).
"""

from __future__ import annotations

import math

import torch

LOG2 = math.log(2.0)
# Half the width of one of the 256 bins of an 8-bit image scaled to [−1, 1].
HALF_BIN = 1.0 / 255.0


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats (the closed form of two Gaussians)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log p(x) per element for 8-bit data in [−1, 1] (Ho et al., eq. 13): the mass N(mean, e^log_var) puts on
    x's bin [x − 1/255, x + 1/255], the edge bins reaching to ∓∞. Exact normal CDFs (``log_ndtr``)."""
    inv_std = torch.exp(-0.5 * log_var)
    upper = inv_std * (x - mean + HALF_BIN)
    lower = inv_std * (x - mean - HALF_BIN)
    log_below_upper = torch.special.log_ndtr(upper)  # the bin of x = −1: (−∞, upper]
    log_above_lower = torch.special.log_ndtr(-lower)  # the bin of x = 1: [lower, ∞)
    # An interior bin: Φ(upper) − Φ(lower), from the side where it is not a difference of two numbers near 1.
    mass = torch.where(
        lower > 0,
        torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
        torch.special.ndtr(upper) - torch.special.ndtr(lower),
    )
    log_mass = torch.log(mass.clamp(min=1e-12))
    return torch.where(x < -0.999, log_below_upper, torch.where(x > 0.999, log_above_lower, log_mass))


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, e^log_var) per element: the decoder of continuous (not 8-bit) data."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))
