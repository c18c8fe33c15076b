"""Sample-quality metrics: FID, KID and Inception Score through torchmetrics, on features extracted once.

A feature extractor maps uint8 images (N, 3, H, W) to ``{"features": (N, D), "logits": (N, K) or absent}``.
Features are computed once per image and handed to torchmetrics' metrics through a pass-through "network",
so FID and KID share one extractor pass and real-image features can be cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ddpm_lab.errors import UserError
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

log = logging.getLogger(__name__)

__all__ = [
    "FeatureExtractor",
    "InceptionFeatures",
    "TinyFeatures",
    "FeatureSet",
    "WeightsMissingError",
    "extract_features",
    "chunks",
    "cached_features",
    "scores",
    "format_scores",
]

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


class WeightsMissingError(UserError, FileNotFoundError):
    """The feature extractor's weights file is not where the config says; the message says where to put it."""


class FeatureExtractor(nn.Module):
    """Base: ``forward(uint8 (N, 3, H, W)) -> {"features": (N, D)[, "logits": (N, K)]}``, always in eval mode.

    ``name`` identifies the extractor (and its weights) in cache keys and result files.
    """

    name: str = "features"
    num_features: int
    has_logits: bool = False

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)


class InceptionFeatures(FeatureExtractor):
    """The FID Inception-v3 (TF-ported weights through torch-fidelity): 2048-d pool features and class logits.

    Args:
        weights_path: the ``pt_inception`` weights file; ``null`` looks in torch's hub cache
            (``~/.cache/torch/hub/checkpoints/``), where torch-fidelity keeps it. Never downloads.
    """

    has_logits = True
    num_features = 2048

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        path = Path(weights_path).expanduser() if weights_path else default_inception_path()
        if not path.is_file():
            raise WeightsMissingError(
                f"Inception weights not found at {path}: download {INCEPTION_WEIGHTS} (github.com/toshas/"
                f"torch-fidelity releases v0.2.0) on a machine with internet, put it there or pass "
                f"features.weights_path=/path/to/{INCEPTION_WEIGHTS}; features=tiny runs without weights"
            )
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        # torch-fidelity unpickles with weights_only=False: refuse anything that is not plain tensors first.
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsMissingError(f"{path} is not a plain-tensor Inception weights file: {str(e)[:200]}") from e
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], str(path))
        self.name = f"inception-{path.name}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features, logits = self.net(images)
        return {"features": features.reshape(len(images), -1), "logits": logits.reshape(len(images), -1)}


def default_inception_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


class TinyFeatures(FeatureExtractor):
    """A small, randomly initialised (seeded, fixed) conv net: a cheap stand-in for tests and smoke runs.

    Its FID is a Fréchet distance in random-feature space: 0 for identical distributions, larger for
    different ones, but not comparable with published (Inception) FIDs.
    """

    def __init__(self, num_features: int = 64, width: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, num_features, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        with torch.no_grad():
            for p in self.net.parameters():  # independent of the global RNG: the same features every run
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / max(1, p[0].numel())) ** 0.5)
        self.requires_grad_(False)
        self.num_features = num_features
        self.name = f"tiny{num_features}w{width}s{seed}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": self.net(images.float() / 127.5 - 1.0)}


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
        raise TypeError(f"metrics expect uint8 images, got {images.dtype}: convert with ddpm_lab.images.to_uint8")
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


def cache_key(description: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_features(
    path: Path, compute: Callable[[], FeatureSet], description: dict[str, Any]
) -> tuple[FeatureSet, bool]:
    """Load features from ``path`` or compute and store them there (written to a temp file, then renamed).

    Returns (features, whether they came from the cache). ``description`` is stored alongside and must match.
    """
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("description") == json.loads(json.dumps(description, default=str)):
            return FeatureSet(stored["features"], stored.get("logits")), True
        log.warning("feature cache %s was made for %s; recomputing", path, stored.get("description"))
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = {"description": json.loads(json.dumps(description, default=str)), "features": result.features}
    if result.logits is not None:
        payload["logits"] = result.logits
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return result, False


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
    return f"{', '.join(parts)} (n={result['n_fake']} generated vs {result['n_real']} real images, {extractor} features)"
