"""LightningDataModules serving images as uint8 batches, turned into [−1, 1] floats on the device."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

from ddpm_lab.data.loader import InMemoryLoader
from ddpm_lab.images import to_model_range
from ddpm_lab.data.sources import DatasetError, fit_images, load_image_folder, load_mnist

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "all")


class ImageDataModule(pl.LightningDataModule):
    """Base for every ``dataset`` option: decode once into memory, split off a validation set, serve batches.

    Args:
        root: where the data lives (or is downloaded to).
        image_size: side of the square images served (resize shorter side + center-crop).
        channels: 1 (grayscale) or 3 (RGB); images are converted to match.
        batch_size: the global batch, split evenly across devices.
        val_size: held-out images for ``val/loss`` (an int, or a fraction in (0, 1)).
        split: ``train``, ``test`` or ``all`` (both).
        flip: random horizontal flips (on the device, per batch).
        seed: fixes the validation split and the shuffling order.
    """

    name = "images"

    def __init__(
        self,
        root: str,
        image_size: int,
        channels: int,
        batch_size: int = 64,
        val_size: float = 512,
        split: str = "train",
        flip: bool = False,
        download: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"dataset.channels must be 1 or 3, got {channels}")
        if image_size < 1:
            raise ValueError(f"dataset.image_size must be >= 1, got {image_size}")
        if batch_size < 1:
            raise ValueError(f"dataset.batch_size must be >= 1, got {batch_size}")
        if split not in SPLITS:
            raise ValueError(f"dataset.split must be one of {SPLITS}, got {split!r}")
        self.root = str(Path(root).expanduser())
        self.image_size, self.channels = image_size, channels
        self.batch_size, self.val_size, self.split = batch_size, val_size, split
        self.flip, self.download, self.seed = flip, download, seed
        self.train_images: torch.Tensor | None = None

    # -- to implement per dataset ------------------------------------------------------------------
    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (N, C, H, W) uint8 images at any size and (N,) labels for one split."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------------
    def load_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [self.load(train=True)] if self.split == "train" else [self.load(train=False)]
        if self.split == "all":
            parts.insert(0, self.load(train=True))
        images = torch.cat([fit_images(p[0], self.image_size, self.channels) for p in parts])
        labels = torch.cat([p[1] for p in parts])
        return images, labels

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def per_device_batch_size(self) -> int:
        if self.batch_size % self.world_size:
            raise ValueError(
                f"dataset.batch_size={self.batch_size} (the global batch) does not split evenly over "
                f"{self.world_size} devices: use a multiple of {self.world_size}"
            )
        return self.batch_size // self.world_size

    def setup(self, stage: str | None = None) -> None:
        if self.train_images is not None:
            return
        images, labels = self.load_split()
        n = len(images)
        n_val = int(self.val_size * n) if 0 < self.val_size < 1 else int(self.val_size)
        n_val = min(n_val, n // 2)
        if n - n_val < 1:
            raise DatasetError(f"{self.name} under {self.root} has {n} image(s): too few to train on")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))  # same split on every rank
        self.val_images, self.val_labels = images[perm[:n_val]], labels[perm[:n_val]]
        self.train_images, self.train_labels = images[perm[n_val:]], labels[perm[n_val:]]
        log.info("%s: %d train / %d val images of %s", self.name, n - n_val, n_val, tuple(images.shape[1:]))

    def train_dataloader(self) -> InMemoryLoader:
        bs = self.per_device_batch_size()
        if len(self.train_images) < bs * self.world_size:
            raise DatasetError(
                f"{self.name}: {len(self.train_images)} training images are fewer than one batch "
                f"(dataset.batch_size={self.batch_size}): lower the batch size or add images"
            )
        return InMemoryLoader(
            self.train_images, self.train_labels, bs, shuffle=True, drop_last=True,
            seed=self.seed, rank=self.rank, world_size=self.world_size,
        )

    def val_dataloader(self) -> InMemoryLoader | list:
        if len(self.val_images) == 0:
            return []
        return InMemoryLoader(
            self.val_images, self.val_labels, self.per_device_batch_size(), shuffle=False, drop_last=False,
            rank=self.rank, world_size=self.world_size,
        )

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        images, labels = batch
        images = to_model_range(images)
        if self.flip and self.trainer is not None and self.trainer.training:
            mask = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(mask[:, None, None, None], images.flip(-1), images)
        return images, labels


class MNISTDataModule(ImageDataModule):
    """MNIST (LeCun et al.) from its IDX files via torchvision; downloaded in ``prepare_data`` when allowed."""

    name = "mnist"

    def __init__(self, root: str = "data", image_size: int = 28, channels: int = 1, **kwargs) -> None:
        super().__init__(root=root, image_size=image_size, channels=channels, **kwargs)

    def prepare_data(self) -> None:
        if not self.download:
            return
        try:
            for train in (True, False):
                load_mnist(self.root, train=train, download=True)
        except DatasetError:
            raise
        except Exception as e:  # offline: URLError, HTTPError, timeouts, ...
            raise DatasetError(
                f"could not download MNIST into {self.root} ({type(e).__name__}: {e}). Copy the four IDX files "
                f"into {Path(self.root) / 'MNIST' / 'raw'} and set dataset.download=false"
            ) from e

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return load_mnist(self.root, train=train, download=False)


class ImageFolderDataModule(ImageDataModule):
    """Any folder tree of images; class sub-folders become labels when present."""

    name = "image_folder"

    def __init__(self, root: str, image_size: int = 32, channels: int = 3, on_error: str = "skip", **kwargs) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"dataset.on_error must be 'skip' or 'raise', got {on_error!r}")
        kwargs.setdefault("download", False)
        super().__init__(root=root, image_size=image_size, channels=channels, **kwargs)
        self.on_error = on_error

    def load_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        # A plain folder has no train/test halves unless it holds train/ and test/ sub-folders.
        root = Path(self.root)
        if (root / "train").is_dir() and (root / "test").is_dir():
            wanted = {"train": ["train"], "test": ["test"], "all": ["train", "test"]}[self.split]
            parts = [load_image_folder(root / s, self.image_size, self.channels, self.on_error) for s in wanted]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        images, labels, _ = load_image_folder(root, self.image_size, self.channels, self.on_error)
        return images, labels
