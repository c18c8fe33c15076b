"""Scoring a checkpoint's samples: ``n`` uint8 images drawn from a seed, their FID/KID(/IS) against real
features, the class accuracy of conditional samples, and the lines that report them."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ddpm_lab.artifacts.images import to_uint8
from ddpm_lab.diffusion import DiffusionProcess, Sampler, generate_batches
from ddpm_lab.metrics.class_mix import relabel
from ddpm_lab.metrics.classifier import ClassifierFeatures
from ddpm_lab.metrics.features import FeatureExtractor
from ddpm_lab.metrics.scores import (
    FeatureSet,
    ScoreSettings,
    chunks,
    class_accuracy,
    extract_features,
    format_scores,
    scores,
)

log = logging.getLogger(__name__)


def generate_uint8(
    net: nn.Module,
    diffusion: DiffusionProcess,
    sampler: Sampler,
    settings: ScoreSettings,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """``settings.n`` uint8 samples on the CPU (see ``ddpm_lab.diffusion.generate``); ``labels``: the class of each
    image, for a class-conditional network, guided with scale ``guidance``."""
    out, s = [], settings
    extra = {} if labels is None else {"labels": labels, "guidance": guidance, "guidance_rescale": s.guidance_rescale}
    for batch in generate_batches(
        net, diffusion, s.n, sampler=sampler, seed=s.seed, batch_size=s.batch_size, device=s.device, **extra
    ):
        out.append(to_uint8(batch.images).cpu())
        log.info("sampled %d / %d", batch.start + len(batch.images), s.n)
    return torch.cat(out)


def score_images(
    real: FeatureSet,
    images: torch.Tensor,
    extractor: FeatureExtractor,
    settings: ScoreSettings,
    labels: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    to_model: torch.Tensor | None = None,
) -> dict[str, Any]:
    """FID/KID(/IS) of uint8 samples (see :func:`~ddpm_lab.metrics.scores.scores`); with ``labels`` and a
    classifier extractor (``features=classifier``) also their class accuracy, its predictions (the dataset's
    labels) turned into the model's by ``to_model`` (:func:`~ddpm_lab.metrics.class_mix.to_model_labels`)."""
    s = settings
    fake = extract_features(extractor, chunks(images, s.batch_size), s.device)
    result = scores(
        real, fake, kid_subsets=s.kid_subsets, kid_subset_size=s.kid_subset_size, is_splits=s.is_splits, seed=s.seed
    )
    if labels is not None and isinstance(extractor, ClassifierFeatures):
        predicted = relabel(extractor.predict(images), to_model)
        result.update(class_accuracy(predicted, labels, class_names))
    return result


def sample_and_score(
    net: nn.Module,
    diffusion: DiffusionProcess,
    sampler: Sampler,
    real: FeatureSet,
    extractor: FeatureExtractor,
    settings: ScoreSettings,
    labels: torch.Tensor | None = None,
    guidance: float | None = None,
    class_names: Sequence[str] | None = None,
    to_model: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Draw ``settings.n`` uint8 samples (with ``labels``, guided with scale ``guidance``, None: 1) and score them.

    Returns the images and their row of scores: ``guidance`` (when given), ``sampling_seconds``, then the scores.
    """
    started = time.perf_counter()
    images = generate_uint8(net, diffusion, sampler, settings, labels, 1.0 if guidance is None else guidance)
    row: dict[str, Any] = {"guidance": guidance} if guidance is not None else {}
    row["sampling_seconds"] = round(time.perf_counter() - started, 3)
    row.update(score_images(real, images, extractor, settings, labels, class_names, to_model))
    return images, row


def score_line(row: dict[str, Any], extractor: str, guidance: float | None = None) -> str:
    """One line of a row of scores, with its class accuracy and guidance scale where it has them."""
    line = format_scores(row, extractor)
    if "class_accuracy" in row:
        line += f", class accuracy {100 * row['class_accuracy']:.2f}%"
    return line if guidance is None else f"guidance {guidance:g}: {line}"


def per_class_lines(row: dict[str, Any]) -> list[str]:
    """A line per class of a row with ``per_class`` accuracies: its number of samples and their accuracy."""
    return [
        f"  class {name}: {per['n']} samples, accuracy {per['accuracy']}"
        for name, per in row.get("per_class", {}).items()
    ]
