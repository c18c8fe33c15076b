"""Classifier-free guidance (Ho & Salimans, 2022) as a denoiser wrapper, so every sampler gets it. Plain PyTorch.

Convention: ``ε̂ = ε(x, ∅) + w·(ε(x, c) − ε(x, ∅))``: ``w = 1`` is the purely conditional model, ``w = 0`` the
unconditional one, ``w > 1`` amplifies the class. (Ho & Salimans write ``(1 + w')ε(x, c) − w'ε(x, ∅)``: their
``w'`` is our ``w − 1``.) The combination is linear in the raw network output, and every parameterization (eps,
x0, v) is affine in it with the same coefficients for both halves, so combining raw outputs is exact for all of
them. Only the first ``C = x.shape[1]`` output channels are combined; extra channels (e.g. learned variances)
come from the conditional half.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddpm_lab.errors import ConfigError, check_number

__all__ = [
    "ClassifierFreeGuidance",
    "check_labels",
    "evaluations_per_step",
    "guided",
    "has_null_class",
    "num_classes_of",
    "rescale_guidance",
]


def num_classes_of(net: object) -> int:
    """The classes a denoiser is conditioned on (its ``num_classes`` attribute; 0: unconditional)."""
    return int(getattr(net, "num_classes", 0) or 0)


def evaluations_per_step(guidance: float | None, guidance_rescale: float = 0.0) -> int:
    """Network evaluations per image per sampler step: 1 unguided (``guidance`` None or 1, no rescale), else 2
    (the conditional and the unconditional half, batched into one call of twice the batch)."""
    return 1 if guidance in (None, 1.0) and not guidance_rescale else 2


def has_null_class(net: object) -> bool:
    """Whether a class-conditional denoiser has its null class (index ``num_classes``): what guidance and
    unconditional samples need. Ours always do; a model imported without one says ``null_class = False``."""
    return num_classes_of(net) > 0 and bool(getattr(net, "null_class", True))


NO_NULL_CLASS = (
    "this model has no null (unconditional) class (it was trained elsewhere without one): "
    "ask for classes at guidance=1, without guidance_rescale"
)


def check_labels(
    net: object, labels: torch.Tensor | Sequence[int] | None, n: int, guidance: float
) -> torch.Tensor | None:
    """``labels`` as a 1-D long CPU tensor of length ``n`` (or None), checked against ``net`` and ``guidance``.

    Raises :class:`~ddpm_lab.errors.ConfigError` with one line for every way the request cannot be met.
    """
    guidance = check_number(guidance, "guidance", float)
    num_classes = num_classes_of(net)
    if num_classes and not has_null_class(net) and (labels is None or guidance != 1.0):
        asked = "unconditional samples (no labels)" if labels is None else f"guidance={guidance:g}"
        raise ConfigError(f"{asked}: {NO_NULL_CLASS}")
    if labels is None:
        if guidance != 1.0:
            raise ConfigError(
                f"guidance={guidance:g} needs class labels: pass labels= (the classes to generate) to a "
                "class-conditional model"
                + ("" if num_classes else "; this model is unconditional (train it with conditioning=class)")
            )
        return None
    if not num_classes:
        raise ConfigError(
            "class labels were given but this model is unconditional (num_classes=0): "
            "train one with conditioning=class, or drop the labels/guidance"
        )
    labels = torch.as_tensor(labels).cpu()
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ConfigError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.long().flatten() if labels.ndim <= 1 else labels
    if labels.ndim != 1 or labels.numel() != n:
        raise ConfigError(
            f"labels must be a 1-D tensor of {n} class indices (one per image), got shape {tuple(labels.shape)}"
        )
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ConfigError(
            f"label {int(bad[0])} is outside this model's {num_classes} classes: use 0 ... {num_classes - 1}"
        )
    return labels


def rescale_guidance(guided_out: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al., 2023, eq. 15–16): match the guided output's per-sample std to the
    conditional one's, mixed by ``phi``: ``φ·x_cfg·σ_cond/σ_cfg + (1 − φ)·x_cfg``. Counters over-exposure at
    large ``w``."""
    dims = list(range(1, guided_out.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_cfg = guided_out.std(dim=dims, keepdim=True).clamp(min=1e-12)
    return phi * guided_out * (std_cond / std_cfg) + (1.0 - phi) * guided_out


class ClassifierFreeGuidance:
    """A denoiser ``(x_t, t) -> output`` for a class-conditional ``net(x_t, t, y)`` guided towards ``labels``.

    One forward pass of the batch twice over (conditional half, then the null-class half), combined as
    ``out = u + w·(c − u)`` on the first C channels (see the module doc); ``guidance_rescale`` φ in [0, 1]
    applies :func:`rescale_guidance`. ``w = 1`` (with φ = 0) runs the conditional half alone (exact, half the cost).
    """

    def __init__(self, net, labels: torch.Tensor, guidance: float = 1.0, guidance_rescale: float = 0.0) -> None:
        self.net = net
        self.labels = labels
        self.guidance = check_number(guidance, "guidance", float)
        self.guidance_rescale = check_number(guidance_rescale, "guidance_rescale", float, 0, 1)
        self.null_class = num_classes_of(net)
        if (self.guidance != 1.0 or self.guidance_rescale) and not has_null_class(net):
            raise ConfigError(
                f"guidance={self.guidance:g}, guidance_rescale={self.guidance_rescale:g}: {NO_NULL_CLASS}"
            )

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = self.labels.to(x.device)
        if evaluations_per_step(self.guidance, self.guidance_rescale) == 1:
            return self.net(x, t, y)
        n, c = x.shape[0], x.shape[1]
        t = t.expand(n) if t.ndim == 0 else t
        both = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.null_class)]))
        cond, uncond = both[:n], both[n:]
        out = uncond[:, :c] + self.guidance * (cond[:, :c] - uncond[:, :c])
        if self.guidance_rescale:
            out = rescale_guidance(out, cond[:, :c], self.guidance_rescale)
        return torch.cat([out, cond[:, c:]], dim=1) if cond.shape[1] > c else out


def guided(net, labels: torch.Tensor | None, guidance: float = 1.0, guidance_rescale: float = 0.0):
    """The denoiser a sampler calls: ``net`` itself without labels, else a :class:`ClassifierFreeGuidance`."""
    if labels is None:
        return net
    return ClassifierFreeGuidance(net, labels, guidance, guidance_rescale)
