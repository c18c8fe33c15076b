"""Sample-quality scores: FID, KID and Inception Score through torchmetrics, on features extracted once.

Features are computed once per image and handed to torchmetrics' metrics through a pass-through "network",
so FID and KID share one extractor pass and real-image features can be cached on disk.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from ddpm_lab.metrics.features import FeatureExtractor


@dataclass(frozen=True)
class ScoreSettings:
    """How samples are drawn and scored: ``n`` of them (against ``n_real`` real images, None: all) from ``seed`` in
    batches of ``batch_size`` on ``device``; KID over ``kid_subsets`` subsets of ``kid_subset_size``, IS over
    ``is_splits`` splits; ``guidance_rescale`` φ of guided samples (Lin et al., 2023)."""

    device: torch.device
    n: int
    n_real: int | None
    batch_size: int
    seed: int
    kid_subsets: int
    kid_subset_size: int
    is_splits: int
    guidance_rescale: float


@dataclass
class FeatureSet:
    """Features (and logits, when the extractor has them) of a set of images."""

    features: torch.Tensor
    logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.features)


def as_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, 1|3, H, W) uint8 → (N, 3, H, W) uint8: grayscale is repeated over the three channels."""
    if images.dtype != torch.uint8:
        raise TypeError(
            f"metrics expect uint8 images, got {images.dtype}: convert with ddpm_lab.artifacts.images.to_uint8"
        )
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor, batches: Iterable[torch.Tensor], device: torch.device | str = "cpu"
) -> FeatureSet:
    """Run ``extractor`` over uint8 image batches; results are float64 on the CPU."""
    extractor.to(device).eval()
    feats, logits = [], []
    for images in batches:
        out = extractor(as_rgb_uint8(images).to(device))
        feats.append(out["features"].double().cpu())
        if "logits" in out:
            logits.append(out["logits"].double().cpu())
    if not feats:
        raise ValueError("no images to extract features from")
    return FeatureSet(torch.cat(feats), torch.cat(logits) if logits else None)


def chunks(images: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    return (images[i : i + batch_size] for i in range(0, len(images), batch_size))


def random_subset(images: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """``n`` of the images drawn with ``seed`` (all of them, in order, when ``n`` is None or not smaller)."""
    if n is None or n >= len(images):
        return images
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]]


class _Given(nn.Module):
    """Pass-through 'network' that lets torchmetrics' metrics consume precomputed features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def scores(
    real: FeatureSet,
    fake: FeatureSet,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """FID, KID (mean ± std over subsets) and, when ``fake`` has logits, the Inception Score.

    The sample counts go into the result: scores from different counts are not comparable.
    """
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 real and 2 generated images, got {len(real)} and {len(fake)}")
    dim = real.features.shape[1]
    if fake.features.shape[1] != dim:
        raise ValueError(f"real and generated features differ in size: {dim} vs {fake.features.shape[1]}")
    fid = FrechetInceptionDistance(feature=_Given(dim), reset_real_features=False)
    fid.update(real.features, real=True)
    fid.update(fake.features, real=False)
    out = {"fid": float(fid.compute()), "n_fake": len(fake), "n_real": len(real)}

    subset = min(kid_subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "KID/IS keep all features in memory": they are already in memory here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Given(dim), subsets=kid_subsets, subset_size=subset)
        inception_score = InceptionScore(feature=_Given(1), splits=min(is_splits, len(fake)))
    kid.update(real.features.float(), real=True)  # float32 kernels: ~2x faster, ample precision for KID
    kid.update(fake.features.float(), real=False)
    with torch.random.fork_rng():  # KID draws random subsets: seeded, and the caller's RNG is untouched
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
        if fake.logits is not None:
            inception_score.update(fake.logits)
            is_mean, is_std = inception_score.compute()
            out.update(is_mean=float(is_mean), is_std=float(is_std))
    out.update(kid_mean=float(kid_mean), kid_std=float(kid_std), kid_subset_size=subset)
    return out


def format_scores(result: dict[str, Any], extractor: str) -> str:
    """One line with every score and the sample counts behind it."""
    parts = [f"FID {result['fid']:.3f}", f"KID {result['kid_mean']:.5f} ± {result['kid_std']:.5f}"]
    if "is_mean" in result:
        parts.append(f"IS {result['is_mean']:.3f} ± {result['is_std']:.3f}")
    return (
        f"{', '.join(parts)} (n={result['n_fake']} generated vs {result['n_real']} real images, {extractor} features)"
    )


def class_accuracy(
    predicted: torch.Tensor, wanted: torch.Tensor, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """The share of conditional samples a classifier puts in the class they were asked for, overall and per class.

    Returns ``{"class_accuracy": float, "per_class": {name: {"n": count, "accuracy": float | None}}}``, one
    entry per asked class (``class_names[k]``, else ``str(k)``); a class never asked for has accuracy None.
    """
    predicted, wanted = torch.as_tensor(predicted).long().cpu(), torch.as_tensor(wanted).long().cpu()
    if predicted.shape != wanted.shape or predicted.ndim != 1 or len(wanted) == 0:
        raise ValueError(
            f"need two equal, non-empty label vectors, got {tuple(predicted.shape)} and {tuple(wanted.shape)}"
        )
    right = predicted == wanted
    num_classes = max(int(wanted.max()) + 1, len(class_names or ()))
    per_class = {}
    for k in range(num_classes):
        asked = wanted == k
        n = int(asked.sum())
        name = str(class_names[k]) if class_names is not None and k < len(class_names) else str(k)
        per_class[name] = {"n": n, "accuracy": float(right[asked].double().mean()) if n else None}
    return {"class_accuracy": float(right.double().mean()), "per_class": per_class}
