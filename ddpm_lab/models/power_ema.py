"""Post-hoc EMA (Karras et al., 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", EDM2,
section 3 and appendix C). Plain PyTorch.

A power-function EMA with exponent γ gives the weights θ_τ of training step τ ≤ t the profile
p_t(τ) = (γ + 1) τ^γ / t^(γ + 1): its relative width σ_rel = std(τ)/t is √((γ + 1) / ((γ + 2)² (γ + 3))), so one
number says how long the average is, whatever t is. :class:`PowerEMA` keeps such averages during training (one per
tracked σ_rel); the snapshots of them taken every few steps are basis functions, and the average of any other
length at step t is the least-squares combination of the snapshots' profiles (the Gram matrix of the profiles in
closed form, :func:`profile_dot`), applied to the snapshots' weights (:func:`posthoc_coefficients`).

The discrete update θ̂_t = β_t θ̂_(t−1) + (1 − β_t) θ_t with β_t = ((t − 1)/t)^(γ + 1) gives θ_τ exactly the weight
∫_(τ−1)^τ p_t: the continuous profile of weights held constant over each step, so the closed forms hold exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ddpm_lab.errors import ConfigError, check_number

__all__ = [
    "SIGMA_REL_MAX",
    "PosthocFit",
    "PowerEMA",
    "check_sigma_rels",
    "gamma_to_sigma_rel",
    "posthoc_coefficients",
    "profile_dot",
    "sigma_rel_to_gamma",
]

# σ_rel of γ = 0 (a uniform average over all of training, std t/√12): longer averages need γ < 0, which EDM2 does
# not use and whose profiles weigh the first steps most.
SIGMA_REL_MAX = 12**-0.5


def gamma_to_sigma_rel(gamma: float) -> float:
    """σ_rel = √((γ + 1) / ((γ + 2)² (γ + 3))) (EDM2, eq. 3): the profile's std relative to its length t."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent γ ≥ 0 of the power profile of relative width ``sigma_rel`` in (0, 1/√12).

    σ_rel(γ) falls monotonically from 1/√12 at γ = 0 (roughly as 1/γ for large γ), so bisection finds γ to double
    precision.
    """
    sigma_rel = check_number(sigma_rel, "sigma_rel", float, 0, SIGMA_REL_MAX, low_open=True, high_open=True)
    low, high = 0.0, 2.0 / sigma_rel**2
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if gamma_to_sigma_rel(mid) > sigma_rel else (low, mid)
        if high - low <= 1e-15 * high:
            break
    return 0.5 * (low + high)


def check_sigma_rels(values: object, key: str) -> tuple[float, ...]:
    """``values`` as a non-empty tuple of distinct σ_rel in (0, 1/√12); one ConfigError line naming ``key``."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, (str, bytes)) or values is None or not hasattr(values, "__iter__"):
        raise ConfigError(f"{key} must be a list of numbers, got {values!r}: set {key}=[0.05,0.10]")
    items = list(values)
    if not items:
        raise ConfigError(f"{key} is an empty list: set {key}=[0.05,0.10]")
    checked = tuple(check_number(v, key, float) for v in items)
    outside = [v for v in checked if not 0 < v < SIGMA_REL_MAX]
    if outside:
        raise ConfigError(
            f"{key}={outside[0]:g} is out of range: an EMA length σ_rel is in (0, {SIGMA_REL_MAX:.4f}) "
            "(1/√12 averages all of training evenly; EDM2 tracks 0.05 and 0.10)"
        )
    repeated = sorted({v for v in checked if checked.count(v) > 1})
    if repeated:
        raise ConfigError(f"{key} lists {repeated[0]:g} more than once: give each EMA length once")
    return checked


def profile_dot(t_a: torch.Tensor, gamma_a: torch.Tensor, t_b: torch.Tensor, gamma_b: torch.Tensor) -> torch.Tensor:
    """⟨p_a, p_b⟩ = ∫ p_a p_b dτ of power profiles (t_a, γ_a) and (t_b, γ_b), elementwise (broadcasting).

    With t_a ≤ t_b: (γ_a + 1)(γ_b + 1) / (γ_a + γ_b + 1) · (t_a / t_b)^γ_b / t_b (EDM2, appendix C.2), in this
    ratio form so that large γ neither overflows nor underflows before the product.
    """
    t_a, gamma_a, t_b, gamma_b = torch.broadcast_tensors(
        *(torch.as_tensor(v, dtype=torch.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    )
    shorter = t_a <= t_b
    t_min, t_max = torch.minimum(t_a, t_b), torch.maximum(t_a, t_b)
    gamma_longer = torch.where(shorter, gamma_b, gamma_a)
    scale = (gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1)
    return scale * (t_min / t_max) ** gamma_longer / t_max


@dataclass(frozen=True)
class PosthocFit:
    """The combination Σ_i ``coefficients[i]`` · snapshot_i that best matches the asked-for profile.

    ``relative_error`` is ‖Σ x_i p_i − p_r‖ / ‖p_r‖ in L²: 0 when the asked-for EMA is one of the snapshots, and
    (by Cauchy–Schwarz) a bound on how far the result can be from the true EMA of that length, relative to the
    weights' own size over training.
    """

    coefficients: torch.Tensor  # float64, one per snapshot
    relative_error: float


def posthoc_coefficients(
    steps: Sequence[int], gammas: Sequence[float], target_step: int, target_gamma: float
) -> PosthocFit:
    """EDM2's least squares: the x minimising ‖Σ x_i p_(t_i, γ_i) − p_(t_r, γ_r)‖², from the normal equations
    A x = b with A_ij = ⟨p_i, p_j⟩ and b_i = ⟨p_i, p_r⟩ (:func:`profile_dot`), solved in float64.

    A is scaled to a unit diagonal first (late snapshots' profiles have norms ∝ 1/√t) and solved by least squares
    (SVD), so duplicated snapshots cannot make it singular. When the asked-for profile is one of the snapshots, b
    is a column of A and x is that unit vector up to cond(A)·1e-16. ``steps`` are the snapshots' training steps
    (≥ 1), ``gammas`` their exponents. The relative error is computed from the same Gram matrix, whose rounding
    leaves a floor of about 1e-4 under it.
    """
    t = torch.tensor([float(s) for s in steps], dtype=torch.float64)
    g = torch.tensor([float(x) for x in gammas], dtype=torch.float64)
    if t.numel() == 0 or t.numel() != g.numel() or bool((t < 1).any()):
        raise ValueError("posthoc_coefficients needs one γ per snapshot and snapshot steps >= 1")
    gram = profile_dot(t[:, None], g[:, None], t[None, :], g[None, :])
    target = profile_dot(t, g, torch.tensor(float(target_step)), torch.tensor(float(target_gamma)))
    norm = gram.diagonal().sqrt()
    scaled = gram / norm[:, None] / norm[None, :]
    x = torch.linalg.lstsq(scaled, (target / norm)[:, None], driver="gelsd").solution[:, 0] / norm
    self_dot = float(profile_dot(target_step, target_gamma, target_step, target_gamma))
    residual = max(self_dot - 2 * float(x @ target) + float(x @ gram @ x), 0.0)
    return PosthocFit(x, math.sqrt(residual / self_dot))


class PowerEMA:
    """Power-function EMA averages of some tensors (a network's parameters), one per σ_rel.

    ``update(tensors, step)`` after optimizer step ``step`` (1-based):
    θ̂ ← β θ̂ + (1 − β) θ with β = (previous step / step)^(γ + 1), i.e. ((t − 1)/t)^(γ + 1) step by step (and the
    exact weight for an average that skipped steps with the weights constant). At step 1, β = 0: θ̂ = θ_1.
    Averages keep each tensor's device, dtype and memory layout, so one ``_foreach_lerp_`` updates them all.

    Args:
        sigma_rels: the relative EMA lengths to keep (EDM2 keeps 0.05 and 0.10).
        tensors: name -> tensor to average (e.g. ``dict(module.named_parameters())``).
        step: the step the current values of ``tensors`` belong to (0: before training).
    """

    def __init__(self, sigma_rels: Sequence[float], tensors: Mapping[str, torch.Tensor], step: int = 0) -> None:
        self.sigma_rels = check_sigma_rels(sigma_rels, "sigma_rels")
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        self.names = list(tensors)
        self.step = int(step)
        with torch.no_grad():
            self.averages = [[torch.empty_like(t).copy_(t) for t in tensors.values()] for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, tensors: Sequence[torch.Tensor], step: int) -> None:
        """Fold in the weights ``tensors`` (in the order of :attr:`names`) of optimizer step ``step``."""
        if step <= self.step:
            raise ValueError(f"PowerEMA.update: step {step} is not after step {self.step}")
        tensors = list(tensors)
        for gamma, average in zip(self.gammas, self.averages):
            beta = (self.step / step) ** (gamma + 1)
            if beta == 0.0:  # the first step: exactly the weights (lerp by 1 would round)
                torch._foreach_copy_(average, tensors)
            else:
                torch._foreach_lerp_(average, tensors, 1.0 - beta)
        self.step = step

    def profiles(self) -> list[dict[str, torch.Tensor]]:
        """Each average as name -> tensor (the tensors themselves, not copies)."""
        return [dict(zip(self.names, average)) for average in self.averages]

    @torch.no_grad()
    def load(self, profiles: Sequence[Mapping[str, torch.Tensor]], step: int) -> None:
        """Replace the averages by saved ones (same σ_rels, names and shapes), keeping each tensor's layout."""
        if len(profiles) != len(self.averages):
            raise ValueError(f"{len(profiles)} saved averages for {len(self.averages)} σ_rels")
        for average, saved in zip(self.averages, profiles):
            if list(saved) != self.names:
                raise ValueError("the saved averages name other tensors than this network's parameters")
            for target, name in zip(average, self.names):
                if tuple(saved[name].shape) != tuple(target.shape):
                    raise ValueError(f"the saved average of {name} has shape {tuple(saved[name].shape)}")
                target.copy_(saved[name])
        self.step = int(step)
