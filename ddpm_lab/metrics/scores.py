"""Sample-quality scores on features extracted once: FID (the Fréchet distance, here), KID and Inception Score
(through torchmetrics), the spread of FID over the generated set and the real-vs-real floor at the same n.

Features are computed once per image and handed to torchmetrics' metrics through a pass-through "network",
so FID and KID share one extractor pass and real-image features can be cached on disk. The real side of FID may
also be published reference :class:`Statistics` (mu, sigma) instead of features.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from ddpm_lab.metrics.features import FeatureExtractor
from ddpm_lab.ranks import Ranks


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
    bootstrap: int = 0  # FID's spread: its std over this many resamples of the generated set (0: none)


@dataclass
class FeatureSet:
    """Features (and logits, when the extractor has them) of a set of images."""

    features: torch.Tensor
    logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.features)


@dataclass(frozen=True)
class Statistics:
    """What FID compares of a set: the mean ``mu`` (D,) and covariance ``sigma`` (D, D) of its features (float64),
    from ``n`` images (None: not known, e.g. published reference statistics)."""

    mu: torch.Tensor
    sigma: torch.Tensor
    n: int | None = None


def statistics(features: torch.Tensor, counts: torch.Tensor | None = None) -> Statistics:
    """Mean and unbiased covariance of (N, D) features in float64; ``counts``: how often each row is taken (a
    bootstrap resample), default once each."""
    x = features.double()
    w = torch.ones(len(x), dtype=torch.float64) if counts is None else counts.double()
    total = w.sum()
    mu = (w[:, None] * x).sum(0) / total
    centred = x - mu
    sigma = (centred.T * w) @ centred / (total - 1)
    return Statistics(mu, sigma, int(total))


def _sqrt_psd(sigma: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a covariance (negative rounding-error eigenvalues taken as 0)."""
    values, vectors = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def _frechet(a: Statistics, root_a: torch.Tensor, b: Statistics) -> float:
    middle = root_a @ b.sigma @ root_a  # symmetric, with the eigenvalues of Σ_a Σ_b
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((a.mu - b.mu).square().sum() + a.sigma.trace() + b.sigma.trace() - 2 * trace_sqrt)


def frechet_distance(a: Statistics, b: Statistics) -> float:
    """FID (Heusel et al., 2017): ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½), where Tr (Σ_a Σ_b)^½ is the sum of
    √λ over the eigenvalues of the symmetric Σ_a^½ Σ_b Σ_a^½ (the same eigenvalues, computed stably)."""
    return _frechet(a, _sqrt_psd(a.sigma), b)


def fid_spread(real: Statistics, fake: torch.Tensor, resamples: int, seed: int) -> float:
    """The standard deviation of FID over ``resamples`` bootstrap resamples of the generated features (n draws
    with replacement, seeded): how much FID moves with the generated set alone, the real side held fixed."""
    if resamples < 2:
        raise ValueError(f"a spread needs at least 2 resamples, got {resamples}")
    g = torch.Generator().manual_seed(seed)
    root = _sqrt_psd(real.sigma)
    values = []
    for _ in range(resamples):
        counts = torch.bincount(torch.randint(len(fake), (len(fake),), generator=g), minlength=len(fake))
        values.append(_frechet(real, root, statistics(fake, counts)))
    return float(torch.tensor(values, dtype=torch.float64).std())


def gather_features(ranks: Ranks, part: FeatureSet | None, n: int, batch_size: int) -> FeatureSet | None:
    """Every rank's features of its share of ``n`` images (:meth:`~ddpm_lab.ranks.Ranks.share`) in image order,
    on every rank (None: rank 0 has none)."""
    features = ranks.gather(None if part is None else part.features, n, batch_size)
    logits = ranks.gather(None if part is None else part.logits, n, batch_size)
    return None if features is None else FeatureSet(features, logits)


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


SCORING_THREADS = 8  # at most: FID's covariances and eigendecompositions gain little from more


def _cores() -> int:
    """The CPU cores this process may run on (a cluster's cpuset, not the whole machine, where the OS says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def scoring_threads() -> Iterator[None]:
    """Score with the same number of CPU threads whatever the number of processes: BLAS/LAPACK and torch's
    reductions add in an order that depends on it, and Lightning gives each of W processes 1/W of the cores, so
    rank 0's FID would otherwise differ from one device's in its last digits."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(SCORING_THREADS, _cores()))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def scores(
    real: FeatureSet | Statistics,
    fake: FeatureSet,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    seed: int = 0,
    bootstrap: int = 0,
) -> dict[str, Any]:
    """FID (and its spread over ``bootstrap`` resamples of ``fake``, when ≥ 2), KID (mean ± std over random subsets)
    and, when ``fake`` has logits, the Inception Score, on a fixed number of threads (:func:`scoring_threads`).

    ``real``: the real images' features, or reference :class:`Statistics` (mu, sigma only: then KID, which needs
    features, is None). The sample counts go into the result: scores from different counts are not comparable.
    """
    with scoring_threads():
        return _scores(real, fake, kid_subsets, kid_subset_size, is_splits, seed, bootstrap)


def _scores(
    real: FeatureSet | Statistics,
    fake: FeatureSet,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    seed: int = 0,
    bootstrap: int = 0,
) -> dict[str, Any]:
    """:func:`scores` on the threads it set."""
    reference = isinstance(real, Statistics)
    n_real = real.n if reference else len(real)
    if len(fake) < 2 or (not reference and len(real) < 2):
        raise ValueError(f"FID needs at least 2 real and 2 generated images, got {n_real} and {len(fake)}")
    dim = len(real.mu) if reference else real.features.shape[1]
    if fake.features.shape[1] != dim:
        raise ValueError(f"real and generated features differ in size: {dim} vs {fake.features.shape[1]}")
    real_stats = real if reference else statistics(real.features)
    out: dict[str, Any] = {
        "fid": frechet_distance(real_stats, statistics(fake.features)),
        "n_fake": len(fake),
        "n_real": n_real,
    }
    if bootstrap >= 2:
        out.update(fid_std=fid_spread(real_stats, fake.features, bootstrap, seed), fid_bootstrap=bootstrap)

    with warnings.catch_warnings():  # "KID/IS keep all features in memory": they are already in memory here
        warnings.simplefilter("ignore", UserWarning)
        # sync_on_compute=False: the features are all here already; under DDP torchmetrics would gather them from
        # every rank again (and wait for ranks that are not scoring)
        inception_score = InceptionScore(feature=_Given(1), splits=min(is_splits, len(fake)), sync_on_compute=False)
        if not reference:
            subset = min(kid_subset_size, len(real), len(fake))
            kid = KernelInceptionDistance(
                feature=_Given(dim), subsets=kid_subsets, subset_size=subset, sync_on_compute=False
            )
            kid.update(real.features.float(), real=True)  # float32 kernels: ~2x faster, ample precision for KID
            kid.update(fake.features.float(), real=False)
    with torch.random.fork_rng():  # KID draws random subsets: seeded, and the caller's RNG is untouched
        torch.manual_seed(seed)
        if reference:
            out.update(kid_mean=None, kid_std=None, kid_subset_size=None)
        else:
            kid_mean, kid_std = kid.compute()
            out.update(kid_mean=float(kid_mean), kid_std=float(kid_std), kid_subset_size=subset)
        if fake.logits is not None:
            inception_score.update(fake.logits)
            is_mean, is_std = inception_score.compute()
            out.update(is_mean=float(is_mean), is_std=float(is_std))
    return out


def real_floor(real: FeatureSet, n: int, seed: int, kid_subsets: int = 100, kid_subset_size: int = 1000) -> dict:
    """The real-vs-real floor at ``n``: FID and KID between two disjoint random subsets of the real images, ``n``
    each when there are 2n of them (``method`` "disjoint"), else the two random halves (``method`` "split-half",
    ``n`` then the half's size). What a perfect model would score at that n: small-n FID is biased upwards."""
    m = n if 2 * n <= len(real) else len(real) // 2
    if m < 2:
        raise ValueError(f"a real-vs-real floor needs at least 4 real images, got {len(real)}")
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    a, b = FeatureSet(real.features[order[:m]]), FeatureSet(real.features[order[m : 2 * m]])
    result = scores(a, b, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed)
    return {
        "fid": result["fid"],
        "kid_mean": result["kid_mean"],
        "kid_std": result["kid_std"],
        "n": m,
        "method": "disjoint" if m == n else "split-half",
    }


def uncertainty_notes(settings: ScoreSettings, reference: bool = False) -> dict[str, str | None]:
    """What the ``fid_std`` and ``kid_std`` of :func:`scores` measure (None: not reported), for results files;
    ``reference``: the real side was reference statistics."""
    s = settings
    fid = f"std of FID over {s.bootstrap} bootstrap resamples of the generated images (seed {s.seed})"
    kid = f"std of KID over {s.kid_subsets} random subsets of both sets (seed {s.seed})"
    no_kid = "not reported: KID needs the real images' features; reference statistics hold mu and sigma only"
    return {
        "fid_std": fid if s.bootstrap else None,
        "kid_std": None if reference else kid,
        "kid": no_kid if reference else None,
    }


def format_scores(result: dict[str, Any], extractor: str) -> str:
    """One line with every score, its uncertainty, and the sample counts behind it."""
    fid = f"FID {result['fid']:.3f}"
    if result.get("fid_std") is not None:
        fid += f" ± {result['fid_std']:.3f}"
    parts = [fid]
    if result.get("kid_mean") is not None:
        parts.append(f"KID {result['kid_mean']:.5f} ± {result['kid_std']:.5f}")
    if "is_mean" in result:
        parts.append(f"IS {result['is_mean']:.3f} ± {result['is_std']:.3f}")
    real = f"{result['n_real']} real images" if result["n_real"] is not None else "reference statistics"
    return f"{', '.join(parts)} (n={result['n_fake']} generated vs {real}, {extractor} features)"


def format_floor(floor: dict[str, Any]) -> str:
    """The real-vs-real floor as one line, to read a small-n score against."""
    how = "two disjoint random subsets" if floor["method"] == "disjoint" else "the two halves"
    return (
        f"real-vs-real floor: FID {floor['fid']:.3f}, KID {floor['kid_mean']:.5f} ± {floor['kid_std']:.5f} "
        f"({how} of the real images, n={floor['n']} each)"
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
