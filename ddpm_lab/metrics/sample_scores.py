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
    Statistics,
    chunks,
    class_accuracy,
    extract_features,
    format_scores,
    gather_features,
    scores,
)
from ddpm_lab.ranks import ONE_PROCESS, Ranks

log = logging.getLogger(__name__)


def generate_uint8(
    net: nn.Module,
    diffusion: DiffusionProcess,
    sampler: Sampler,
    settings: ScoreSettings,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
    indices: range | None = None,
) -> torch.Tensor:
    """``settings.n`` uint8 samples on the CPU (see ``ddpm_lab.diffusion.generate``), or only images ``indices``
    of them; ``labels``: the class of each of the n images, for a class-conditional network, guided with scale
    ``guidance``."""
    out, s = [], settings
    indices = range(s.n) if indices is None else indices
    extra = {}
    if labels is not None:
        extra = {"labels": labels[indices.start : indices.stop], "guidance": guidance}
        extra["guidance_rescale"] = s.guidance_rescale
    for batch in generate_batches(
        net,
        diffusion,
        len(indices),
        sampler=sampler,
        seed=s.seed,
        batch_size=s.batch_size,
        device=s.device,
        indices=indices,
        **extra,
    ):
        out.append(to_uint8(batch.images).cpu())
        log.info("sampled %d / %d", indices.start + batch.start + len(batch.images), s.n)
    return torch.cat(out)


def score_images(
    real: FeatureSet | Statistics,
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
    classify = labels is not None and isinstance(extractor, ClassifierFeatures)
    predicted = relabel(extractor.predict(images), to_model) if classify else None
    return _score(real, fake, predicted, s, labels, class_names)


def _score(
    real: FeatureSet | Statistics,
    fake: FeatureSet,
    predicted: torch.Tensor | None,
    s: ScoreSettings,
    labels: torch.Tensor | None,
    class_names: Sequence[str] | None,
) -> dict[str, Any]:
    result = scores(
        real,
        fake,
        kid_subsets=s.kid_subsets,
        kid_subset_size=s.kid_subset_size,
        is_splits=s.is_splits,
        seed=s.seed,
        bootstrap=s.bootstrap,
    )
    if predicted is not None and labels is not None:
        result.update(class_accuracy(predicted, labels, class_names))
    return result


def sample_and_score(
    net: nn.Module,
    diffusion: DiffusionProcess,
    sampler: Sampler,
    real: FeatureSet | Statistics | None,
    extractor: FeatureExtractor,
    settings: ScoreSettings,
    labels: torch.Tensor | None = None,
    guidance: float | None = None,
    class_names: Sequence[str] | None = None,
    to_model: torch.Tensor | None = None,
    ranks: Ranks = ONE_PROCESS,
    keep: int | None = None,
) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    """Draw ``settings.n`` uint8 samples (with ``labels``, guided with scale ``guidance``, None: 1) and score them.

    Returns the images (the first ``keep``, None: all) and their row of scores: ``guidance`` (when given),
    ``sampling_seconds``, then the scores. On several ``ranks`` each draws and extracts its share of the images
    (whole batches: :meth:`~ddpm_lab.ranks.Ranks.share`), the features are gathered in image order and rank 0,
    the only one that needs ``real``, scores them: the same images and scores as on one device. The other ranks
    get (None, None).
    """
    s = settings
    share = ranks.share(s.n, s.batch_size)
    classify = labels is not None and isinstance(extractor, ClassifierFeatures)
    images = fake = predicted = None
    started = time.perf_counter()
    with ranks.together():
        if share:
            w = 1.0 if guidance is None else guidance
            images = generate_uint8(net, diffusion, sampler, s, labels, w, indices=share)
    seconds = round(time.perf_counter() - started, 3)
    with ranks.together():
        if share:
            fake = extract_features(extractor, chunks(images, s.batch_size), s.device)
            predicted = relabel(extractor.predict(images), to_model) if classify else None
    fake = gather_features(ranks, fake, s.n, s.batch_size)
    predicted = ranks.gather(predicted, s.n, s.batch_size)
    images = ranks.gather(images, s.n, s.batch_size, first=keep)
    if not ranks.is_zero:
        return None, None
    row: dict[str, Any] = {"guidance": guidance} if guidance is not None else {}
    row["sampling_seconds"] = seconds
    row.update(_score(real, fake, predicted, s, labels, class_names))
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
