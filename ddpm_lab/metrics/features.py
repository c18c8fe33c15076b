"""Feature extractors: uint8 images (N, 3, H, W) → ``{"features": (N, D)[, "logits": (N, K)]}``.

``InceptionFeatures`` is the FID network (its weights fetched into torch's hub cache on first use, as torch-fidelity
and pytorch-fid do, and checked by SHA-256 before every load); ``TinyFeatures`` is a fixed random conv net for tests
and smoke runs.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ddpm_lab.artifacts.download import SCHEMES, download_verified, sha256_of
from ddpm_lab.errors import ConfigError, WeightsMismatchError, WeightsMissingError, check_flag, check_number

# The FID Inception-v3 (TensorFlow's 2015-12-05 graph ported to PyTorch): the file torch-fidelity downloads (and
# pytorch-fid, as pt_inception-2015-12-05-6726825d.pth: the same bytes). torch.hub names files <name>-<first 8 hex
# digits of their SHA-256>; the full digest and size are those published with the file.
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_BYTES = 95_628_359


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
        weights_path: the weights file; ``null`` uses torch's hub cache (``~/.cache/torch/hub/checkpoints/``, shared
            with torch-fidelity), fetching the file there when it is missing.
        download: ``false`` never downloads (air-gapped clusters): a missing file is one line saying where to put it.
        url: where the file is fetched from (a mirror of the same file; its SHA-256 is checked either way).

    Whichever file is used must be the standard one (its SHA-256): other weights would give FIDs that compare
    with nothing published, so they are refused before anything loads them.
    """

    num_features = 2048

    def __init__(self, weights_path: str | None = None, download: bool = True, url: str = INCEPTION_URL) -> None:
        super().__init__()
        path = inception_weights(weights_path, check_flag(download, "features.download"), url)
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        # torch-fidelity unpickles with weights_only=False: only the file whose SHA-256 was just checked gets there.
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], str(path))
        self.name = f"inception-{path.name}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features, logits = self.net(images)
        return {"features": features.reshape(len(images), -1), "logits": logits.reshape(len(images), -1)}


def default_inception_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


def inception_weights(weights_path: str | None, download: bool, url: str) -> Path:
    """The checked Inception weights file: ``weights_path``, else torch's hub cache (fetched there when missing)."""
    by_hand = (
        f"put {INCEPTION_WEIGHTS} (from {INCEPTION_URL}, on a machine with internet) at {default_inception_path()} "
        f"or pass features.weights_path=/path/to/{INCEPTION_WEIGHTS}; features=tiny runs without weights"
    )
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsMissingError(f"Inception weights not found at {path}: {by_hand}")
    else:
        path = default_inception_path()
        if not path.is_file():
            if not download:
                raise WeightsMissingError(f"Inception weights not found at {path} (features.download=false): {by_hand}")
            if not isinstance(url, str) or urlparse(url).scheme not in SCHEMES:
                raise ConfigError(f"features.url must be an {', '.join(SCHEMES)} URL, got {url!r}")
            return download_verified(url, path, INCEPTION_SHA256, INCEPTION_BYTES, fix=by_hand)
    digest = sha256_of(path)
    if digest != INCEPTION_SHA256:
        fix = "point features.weights_path= at the standard file" if weights_path else "delete it (it is fetched again)"
        raise WeightsMismatchError(
            f"{path} is not the FID Inception weights (SHA-256 {digest}, expected {INCEPTION_SHA256}) and was not "
            f"loaded: {fix}, or {by_hand}"
        )
    return path


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
