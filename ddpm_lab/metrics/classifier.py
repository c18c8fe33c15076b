"""A domain yardstick: a small CNN trained on a dataset's own labelled images (``features=classifier``).

Inception features mean little on 28 px grayscale digits. This classifier is trained once per dataset (its
images' contents) and settings, on a seeded, capped subset of the labelled training images, and kept on disk
next to the real-image statistics. Its penultimate activations are the features of a domain FID/KID (the
Fréchet distance of Heusel et al., 2017, in a space that knows the domain); its predictions give
``class_accuracy`` of conditional samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.errors import ConfigError, check_number, first_line
from ddpm_lab.metrics.features import FeatureExtractor
from ddpm_lab.metrics.scores import chunks

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the network or its training changes, so old classifier files are retrained


class SmallCNN(nn.Module):
    """Three strided 3×3 conv blocks (BatchNorm, ReLU), 2×2 average pool, a ``num_features`` layer, a linear head.

    Any input size works (adaptive pooling); inputs are floats in [−1, 1] with ``in_channels`` channels.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, num_features: int = 64) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.body = nn.Sequential(
            *block(in_channels, width, 2),
            *block(width, 2 * width, 2),
            *block(2 * width, 2 * width, 1),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * width, num_features),
            nn.ReLU(),
        )
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, num_features), logits (N, num_classes))."""
        features = self.body(x)
        return features, self.head(features)


@dataclass
class TrainedClassifier:
    """A fitted :class:`SmallCNN` and how well it does on images it never saw."""

    net: SmallCNN
    heldout_accuracy: float
    n_train: int
    n_heldout: int
    seconds: float
    path: Path | None = None
    from_cache: bool = False


def labelled(images: torch.Tensor, labels: torch.Tensor, source: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The images with a class label (≥ 0), their labels and the number of classes; at least two are needed."""
    keep = labels >= 0
    if int(keep.sum()) == 0 or len(torch.unique(labels[keep])) < 2:
        raise ConfigError(
            f"features=classifier needs images of at least two labelled classes, but {source} has "
            f"{len(torch.unique(labels[keep]))} (an image folder labels images by class sub-folder): "
            "use features=tiny or features=inception"
        )
    if not bool(keep.all()):
        log.warning("classifier: %d unlabelled images left out", int((~keep).sum()))
    return images[keep], labels[keep].long(), int(labels.max()) + 1


def to_input(images: torch.Tensor, in_channels: int) -> torch.Tensor:
    """uint8 (N, 1|3, H, W) → floats in [−1, 1] with ``in_channels`` channels (grayscale: the channels' mean)."""
    x = images.float() / 127.5 - 1.0
    if x.shape[1] != in_channels:
        x = x.mean(1, keepdim=True) if in_channels == 1 else x.expand(-1, in_channels, -1, -1)
    return x


@torch.no_grad()
def accuracy(net: SmallCNN, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    net.eval()
    in_channels = net.body[0].in_channels
    right = sum(
        int((net(to_input(x, in_channels))[1].argmax(1) == y).sum())
        for x, y in zip(chunks(images, batch_size), chunks(labels, batch_size))
    )
    return right / max(1, len(labels))


def vary_levels(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation: each uint8 image's black and white levels moved at random (black to up to 0.35,
    white to 0.75–1) plus a little noise. Samples of a young diffusion model often have grey backgrounds; a
    classifier that saw only pure-black ones calls most of them one class (an "8" on MNIST), which would make
    ``class_accuracy`` measure the background instead of the digit."""
    n = len(images)
    low = 0.35 * torch.rand(n, 1, 1, 1, generator=generator)
    high = 1.0 - 0.25 * torch.rand(n, 1, 1, 1, generator=generator)
    noise = 0.05 * torch.rand(n, 1, 1, 1, generator=generator) * torch.randn(images.shape, generator=generator)
    x = low + (high - low) * images.float() / 255 + noise
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


class ClassifierFeatures(FeatureExtractor):
    """Penultimate features of a :class:`SmallCNN` trained on the dataset's own labelled images.

    Built from its settings alone; :meth:`fit` then trains it (or reads it back from ``folder``) before use.

    Args:
        num_features: size of the penultimate layer: the FID/KID feature dimension.
        width: channels of the first conv block (then 2×width).
        epochs: passes over the training images.
        max_images: at most this many labelled images (a seeded random subset), held-out ones included.
        heldout: fraction of those kept out of training to measure accuracy.
        batch_size, lr: Adam minibatch and learning rate.
        seed: the subset, the split, the initial weights and the batch order.
    """

    def __init__(
        self,
        num_features: int = 64,
        width: int = 32,
        epochs: int = 4,
        max_images: int = 10000,
        heldout: float = 0.1,
        batch_size: int = 64,
        lr: float = 4e-3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.settings = {
            "num_features": check_number(num_features, "features.num_features", int, low=2),
            "width": check_number(width, "features.width", int, low=1),
            "epochs": check_number(epochs, "features.epochs", int, low=1),
            "max_images": check_number(max_images, "features.max_images", int, low=4),
            "heldout": check_number(heldout, "features.heldout", float, low=0, high=1, low_open=True, high_open=True),
            "batch_size": check_number(batch_size, "features.batch_size", int, low=1),
            "lr": check_number(lr, "features.lr", float, low=0, low_open=True),
            "seed": check_number(seed, "features.seed", int),
        }
        self.num_features = self.settings["num_features"]
        self.name = "classifier"
        self.net: SmallCNN | None = None
        self.trained: TrainedClassifier | None = None

    # -- training and the cache ----------------------------------------------------------------------------
    def description(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """What a classifier file was made from: the images' and labels' contents, their shape, the settings."""
        digest = hashlib.sha256()
        digest.update(json.dumps([list(images.shape), list(labels.shape)]).encode())
        digest.update(images.contiguous().numpy().tobytes())
        digest.update(labels.long().contiguous().numpy().tobytes())
        return {"version": CACHE_VERSION, "data": digest.hexdigest(), **self.settings}

    def fit(
        self, images: torch.Tensor, labels: torch.Tensor, folder: str | Path | None, source: str = "the dataset"
    ) -> TrainedClassifier:
        """Read the classifier for these images and settings from ``folder``, or train it there (atomically).

        ``images``: uint8 (N, C, H, W); ``labels``: (N,) class indices, −1 for unlabelled images (left out).
        Raises :class:`ConfigError` (naming ``source``) when there are not two labelled classes.
        """
        images, labels, num_classes = labelled(images.cpu(), labels.cpu(), source)
        description = self.description(images, labels)
        key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]
        path = Path(folder).expanduser() / f"classifier_{images.shape[-1]}px_{key}.pt" if folder else None
        trained = self._read(path, description, images.shape[1], num_classes) if path else None
        if trained is None:
            trained = self._train(images, labels, num_classes)
            if path is not None:
                payload = {
                    "description": description,
                    "state_dict": trained.net.state_dict(),
                    "num_classes": num_classes,
                    "heldout_accuracy": trained.heldout_accuracy,
                    "n_train": trained.n_train,
                    "n_heldout": trained.n_heldout,
                }
                with atomic_write(path, durable=False) as tmp:
                    torch.save(payload, tmp)
                trained.path = path
        self.net, self.trained = trained.net.requires_grad_(False).eval(), trained
        self.name = f"classifier{self.num_features}-{key}"
        return trained

    def _read(self, path: Path, description: dict, in_channels: int, num_classes: int) -> TrainedClassifier | None:
        """The cached classifier, or None (with a warning) when the file is missing, damaged or for other data."""
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)  # untrusted: plain tensors only
            if not isinstance(stored, dict) or stored.get("description") != description:
                raise ValueError("it was made for other images or settings")
            if stored.get("num_classes") != num_classes:
                raise ValueError(f"it has {stored.get('num_classes')!r} classes, not {num_classes}")
            net = SmallCNN(in_channels, num_classes, self.settings["width"], self.num_features)
            net.load_state_dict(stored["state_dict"], strict=True)  # checks every name and shape
            if not all(torch.isfinite(t).all() for t in net.state_dict().values() if t.is_floating_point()):
                raise ValueError("it holds non-finite weights")
            acc = float(stored["heldout_accuracy"])
            n_train, n_heldout = int(stored["n_train"]), int(stored["n_heldout"])
            if not 0 <= acc <= 1:
                raise ValueError(f"its held-out accuracy {acc} is not in [0, 1]")
        except Exception as e:  # truncated, foreign or tampered: retrain rather than fail every later run
            log.warning("classifier file %s is unusable (%s): training it again", path, first_line(e, 200))
            return None
        return TrainedClassifier(net, acc, n_train, n_heldout, 0.0, path, from_cache=True)

    def _train(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> TrainedClassifier:
        """Adam with cross-entropy on a seeded subset; accuracy on the held-out part. CPU, independent of global RNG."""
        s = self.settings
        started = time.perf_counter()
        g = torch.Generator().manual_seed(s["seed"])
        order = torch.randperm(len(images), generator=g)[: s["max_images"]]
        n_heldout = min(len(order) - 1, max(1, round(s["heldout"] * len(order))))
        held, train = order[:n_heldout], order[n_heldout:]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s["seed"])
            net = SmallCNN(images.shape[1], num_classes, s["width"], self.num_features)
        optimizer = torch.optim.Adam(net.parameters(), lr=s["lr"])
        steps = s["epochs"] * -(-len(train) // s["batch_size"])
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=s["lr"], total_steps=steps)
        net.train()
        for _ in range(s["epochs"]):
            for batch in chunks(train[torch.randperm(len(train), generator=g)], s["batch_size"]):
                if len(batch) < 2 and len(train) >= 2:  # BatchNorm needs two images; skip a lone last one
                    continue
                logits = net(to_input(vary_levels(images[batch], g), images.shape[1]))[1]
                loss = nn.functional.cross_entropy(logits, labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        acc = accuracy(net, images[held], labels[held])
        return TrainedClassifier(net.eval(), acc, len(train), len(held), time.perf_counter() - started)

    # -- use ----------------------------------------------------------------------------------------------
    def _fitted(self) -> SmallCNN:
        if self.net is None:
            raise RuntimeError("ClassifierFeatures.fit(images, labels, folder) must run before it is used")
        return self.net

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self._fitted()
        return {"features": net(to_input(images, net.body[0].in_channels))[0]}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """The predicted class (N,) of uint8 images (N, C, H, W), on the CPU."""
        net = self._fitted()
        device = next(net.parameters()).device
        return torch.cat(
            [
                net(to_input(x.to(device), net.body[0].in_channels))[1].argmax(1).cpu()
                for x in chunks(images, batch_size)
            ]
        )

    def report(self) -> dict:
        """What a results file keeps about the classifier."""
        t = self.trained
        if t is None:
            return {}
        return {
            "heldout_accuracy": t.heldout_accuracy,
            "n_train": t.n_train,
            "n_heldout": t.n_heldout,
            "file": str(t.path) if t.path else None,
        }

    def summary(self) -> str:
        """One line: held-out accuracy, images, training time or cache file."""
        t = self.trained
        if t is None:
            return "classifier not trained"
        where = (
            f"read from {t.path}"
            if t.from_cache
            else f"trained in {t.seconds:.1f} s" + (f", saved to {t.path}" if t.path else "")
        )
        return (
            f"classifier: held-out accuracy {100 * t.heldout_accuracy:.2f}% on {t.n_heldout} images "
            f"(trained on {t.n_train}; {where})"
        )
