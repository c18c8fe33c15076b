"""The classes a conditional checkpoint is asked for when it is scored: the dataset's own proportions."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ddpm_lab.errors import ConfigError

log = logging.getLogger(__name__)


def class_mix(counts: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` labels in the proportions ``counts`` (largest-remainder rounding), in a seeded random order."""
    share = counts.double() / counts.sum() * n
    per_class = share.floor().long()
    per_class[torch.argsort(share - per_class, descending=True, stable=True)[: n - int(per_class.sum())]] += 1
    labels = torch.repeat_interleave(torch.arange(len(counts)), per_class)
    return labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def class_counts(labels: torch.Tensor, num_classes: int, source: str, ckpt: Path) -> torch.Tensor:
    """Images per class of the training ``labels`` (−1: none) of ``source``, for a checkpoint of ``num_classes``.

    A label the checkpoint does not know is a ConfigError; no labels at all: every class equally often.
    """
    labels = labels[labels >= 0]
    if len(labels) and int(labels.max()) >= num_classes:
        raise ConfigError(
            f"{source} has labels up to {int(labels.max())}, but {ckpt} knows {num_classes} "
            f"class(es): pass the dataset it was trained on (dataset=... dataset.root=...)"
        )
    if not len(labels):
        log.warning("%s has no class labels: drawing the %d classes uniformly", source, num_classes)
        return torch.ones(num_classes, dtype=torch.long)
    return torch.bincount(labels, minlength=num_classes)
