"""The classes a conditional checkpoint is asked for when it is scored: the dataset's own proportions, its labels
matched to the checkpoint's by class name (:func:`to_model_labels`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ddpm_lab.artifacts.classes import label_map
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


def to_model_labels(
    dataset_names: list[str] | None, model_names: list[str] | None, source: str, ckpt: Path
) -> torch.Tensor | None:
    """``table[k]``: the checkpoint's label of the dataset's class k, matched by name (−1: a class the checkpoint
    was not trained on); None when either side has no names (labels are then compared as they are).

    A checkpoint class the dataset does not have is a ConfigError: its samples could not be scored.
    """
    if not dataset_names or not model_names:
        return None
    missing = [name for name in model_names if name not in dataset_names]
    if missing:
        shown = ", ".join(dataset_names[:8]) + (", ..." if len(dataset_names) > 8 else "")
        raise ConfigError(
            f"{ckpt} was trained on class {missing[0]!r}, which {source} does not have (its classes: {shown}): "
            "pass the dataset it was trained on (dataset=... dataset.root=...)"
        )
    return label_map(dataset_names, model_names)


def relabel(labels: torch.Tensor, table: torch.Tensor | None) -> torch.Tensor:
    """Labels through a :func:`to_model_labels` table (−1, none, stays −1)."""
    if table is None:
        return labels
    return torch.where(labels >= 0, table[labels.clamp(min=0)], labels)
