"""Feature extractors: uint8 images (N, 3, H, W) → ``{"features": (N, D)[, "logits": (N, K)]}``.

``InceptionFeatures`` is the FID network (never downloaded: its weights file must be on disk);
``TinyFeatures`` is a fixed random conv net for tests and smoke runs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ddpm_lab.errors import WeightsMissingError, check_number

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


class FeatureExtractor(nn.Module):
    """Base: ``forward(uint8 (N, 3, H, W)) -> {"features": (N, D)[, "logits": (N, K)]}``, always in eval mode.

    ``name`` identifies the extractor (and its weights) in cache keys and result files.
    """

    name: str = "features"
    num_features: int

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)


class InceptionFeatures(FeatureExtractor):
    """The FID Inception-v3 (TF-ported weights through torch-fidelity): 2048-d pool features and class logits.

    Args:
        weights_path: the ``pt_inception`` weights file; ``null`` looks in torch's hub cache
            (``~/.cache/torch/hub/checkpoints/``), where torch-fidelity keeps it. Never downloads.
    """

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
        num_features = check_number(num_features, "features.num_features", int, low=2)  # FID needs a covariance
        width = check_number(width, "features.width", int, low=1)
        seed = check_number(seed, "features.seed", int)
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, num_features, 3, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
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
