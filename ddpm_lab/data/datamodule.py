"""LightningDataModules serving images as uint8 batches, turned into [−1, 1] floats on the device."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytorch_lightning as pl
import torch

from ddpm_lab.artifacts.cache_dir import DECODED, cache_folder
from ddpm_lab.artifacts.images import to_model_range
from ddpm_lab.data.loader import InMemoryLoader
from ddpm_lab.data.sources import (
    CARS_HOW_TO_GET,
    ON_ERROR,
    fit_images,
    index_image_folder,
    load_cifar10,
    load_digits,
    load_files,
    load_image_folder,
    load_mnist,
    stanford_cars_class_names,
    stanford_cars_files,
)
from ddpm_lab.errors import ConfigError, DatasetError, check_choice, check_flag, check_number

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "all")
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class ImageDataModule(pl.LightningDataModule):
    """Base for every ``dataset`` option: decode once into memory, split off a validation set, serve batches.

    Args:
        root: where the data lives (or is downloaded to).
        image_size: side of the square images served (resize shorter side + center-crop).
        channels: 1 (grayscale) or 3 (RGB); images are converted to match.
        batch_size: the global batch, split evenly across devices.
        val_size: held-out images for ``val/loss`` (an int, or a fraction in (0, 1)).
        split: ``train``, ``test`` or ``all`` (both).
        flip: random horizontal flips (on the device, per batch, training only).
        download: fetch missing files in ``prepare_data`` (datasets that can be downloaded).
        on_device: keep the uint8 tensors on the training device (GPU), so batches are sliced there.
        seed: fixes the validation split and the shuffling order; ``None`` draws a fresh one (nondeterministic).
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
        on_device: bool = False,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        channels = check_choice(channels, "dataset.channels", (1, 3))
        image_size = check_number(image_size, "dataset.image_size", int, low=1)
        batch_size = check_number(batch_size, "dataset.batch_size", int, low=1)
        val_size = check_number(val_size, "dataset.val_size", float, low=0)
        check_choice(split, "dataset.split", SPLITS)
        flip, download, on_device = (
            check_flag(value, f"dataset.{key}")
            for key, value in (("flip", flip), ("download", download), ("on_device", on_device))
        )
        seed = check_number(seed, "dataset.seed", int, optional=True)
        if seed is None:  # seed: null (the run's documented nondeterministic mode)
            seed = random.SystemRandom().randrange(2**31)
        if root is None or str(root) == "":
            raise ConfigError("dataset.root is not set: set dataset.root=<folder of the dataset>")
        self.root = str(Path(root).expanduser())
        self.image_size, self.channels = image_size, channels
        self.batch_size, self.val_size, self.split = batch_size, val_size, split
        self.flip, self.download, self.on_device, self.seed = flip, download, on_device, seed
        self.train_images: torch.Tensor | None = None

    # -- to implement per dataset ------------------------------------------------------------------
    @property
    def class_names(self) -> list[str] | None:
        """The names of the label indices 0, 1, ... (what ``conditioning=class`` conditions on); None: unlabeled.

        Read without decoding any image (a folder listing at most)."""
        return None

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (N, C, H, W) uint8 images at any size and (N,) labels for one split."""
        raise NotImplementedError

    def fetch(self) -> None:
        """Download the files (called by ``prepare_data`` when ``download`` is on); nothing to do by default."""

    # -- shared --------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """The only place that downloads; any failure becomes one DatasetError saying how to get the files."""
        if not self.download:
            return
        try:
            self.fetch()
        except DatasetError:
            raise
        except Exception as e:  # offline: URLError, HTTPError, timeouts, a wrong md5 ...
            raise DatasetError(
                f"could not download {self.name} into {self.root} ({type(e).__name__}: {e}). "
                f"{self.how_to_get()} and set dataset.download=false"
            ) from e

    def how_to_get(self) -> str:
        return f"Copy the {self.name} files into {self.root}"

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

    @property
    def overfitting(self) -> bool:
        """``trainer.overfit_batches`` is on: the loader must repeat the same batches, so it does not shuffle."""
        return self.trainer is not None and bool(getattr(self.trainer, "overfit_batches", 0))

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
        if self.on_device and self.trainer is not None:  # slice batches where they are used: no copies per step
            device = self.trainer.strategy.root_device
            for attr in ("train_images", "train_labels", "val_images", "val_labels"):
                setattr(self, attr, getattr(self, attr).to(device))
        log.info("%s: %d train / %d val images of %s", self.name, n - n_val, n_val, tuple(images.shape[1:]))

    def train_dataloader(self) -> InMemoryLoader:
        bs = self.per_device_batch_size()
        if len(self.train_images) < bs * self.world_size:
            raise DatasetError(
                f"{self.name}: {len(self.train_images)} training images are fewer than one batch "
                f"(dataset.batch_size={self.batch_size}): lower the batch size or add images"
            )
        return InMemoryLoader(
            self.train_images,
            self.train_labels,
            bs,
            shuffle=not self.overfitting,  # debug=overfit: the same first batch every epoch
            drop_last=True,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
        )

    def val_dataloader(self) -> InMemoryLoader | list:
        if len(self.val_images) == 0:
            return []
        return InMemoryLoader(
            self.val_images,
            self.val_labels,
            self.per_device_batch_size(),
            shuffle=False,
            drop_last=False,
            rank=self.rank,
            world_size=self.world_size,
        )

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        images, labels = batch
        images = to_model_range(images)
        if self.flip and self.trainer is not None and self.trainer.training:
            mask = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(mask[:, None, None, None], images.flip(-1), images)
        return images, labels


class MNISTDataModule(ImageDataModule):
    """MNIST (LeCun et al.) from its IDX files in ``root/MNIST/raw``; downloaded by torchvision in ``prepare_data``."""

    name = "mnist"

    def __init__(self, root: str = "data", image_size: int = 28, channels: int = 1, **kwargs) -> None:
        super().__init__(root=root, image_size=image_size, channels=channels, **kwargs)

    def fetch(self) -> None:
        from torchvision.datasets import MNIST

        MNIST(self.root, download=True)

    def how_to_get(self) -> str:
        raw = Path(self.root) / "MNIST" / "raw"
        return f"Copy the four IDX files (train-/t10k-images-idx3-ubyte, -labels-idx1-ubyte, .gz or not) into {raw}"

    @property
    def class_names(self) -> list[str]:
        return [str(digit) for digit in range(10)]

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return load_mnist(self.root, train=train)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (Krizhevsky, 2009) from its pickled batches in ``root/cifar-10-batches-py`` via torchvision."""

    name = "cifar10"

    def __init__(
        self, root: str = "data", image_size: int = 32, channels: int = 3, flip: bool = True, **kwargs
    ) -> None:
        super().__init__(root=root, image_size=image_size, channels=channels, flip=flip, **kwargs)

    def fetch(self) -> None:
        from torchvision.datasets import CIFAR10

        CIFAR10(self.root, download=True)

    def how_to_get(self) -> str:
        from torchvision.datasets import CIFAR10

        return f"Unpack {CIFAR10.url} into {self.root} (it makes cifar-10-batches-py/)"

    @property
    def class_names(self) -> list[str]:
        return list(CIFAR10_CLASSES)

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return load_cifar10(self.root, train=train)


class DigitsDataModule(ImageDataModule):
    """scikit-learn's 1,797 handwritten 8x8 digits (UCI), upsampled to ``image_size``: ships inside scikit-learn,
    so it works offline on any machine (the quick start). ``train``: the first 1,500 images, ``test``: the rest."""

    name = "digits"

    def __init__(
        self, root: str = "scikit-learn", image_size: int = 16, channels: int = 1, split: str = "all", **kwargs
    ) -> None:
        kwargs["download"] = False  # nothing to fetch: the file is part of the installed package
        super().__init__(root=root, image_size=image_size, channels=channels, split=split, **kwargs)

    @property
    def class_names(self) -> list[str]:
        return [str(digit) for digit in range(10)]

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return load_digits(train)


class DecodedImageDataModule(ImageDataModule):
    """Base for datasets of image files: decoded once on a thread pool, then optionally kept in a decoded cache.

    Args:
        on_error: unreadable files are ``skip``-ped with a warning naming them, or ``raise`` stops the run.
        cache_min_files: a split of at least this many files gets a decoded uint8 cache under
            ``<cache_dir>/decoded/`` (keyed on the files' contents, size and channels); null: never.
        cache_dir: our cache folder (``paths.cache_dir``); null: ``$XDG_CACHE_HOME/ddpm_lab`` or
            ``~/.cache/ddpm_lab``. Never the dataset's own folder.
    """

    def __init__(
        self, on_error: str = "skip", cache_min_files: int | None = 5000, cache_dir: str | None = None, **kwargs
    ) -> None:
        check_choice(on_error, "dataset.on_error", ON_ERROR)
        check_number(cache_min_files, "dataset.cache_min_files", int, low=0, optional=True)
        if cache_dir is not None and not isinstance(cache_dir, (str, Path)):
            raise ConfigError(f"dataset.cache_dir={cache_dir!r} is not a folder: set paths.cache_dir=<folder>")
        kwargs.setdefault("download", False)
        super().__init__(**kwargs)
        self.on_error, self.cache_min_files = on_error, cache_min_files
        self.cache_dir = cache_folder(cache_dir)

    def cache_options(self) -> dict:
        if self.cache_min_files is None:
            return {"cache_dir": None}
        return {"cache_dir": self.cache_dir / DECODED, "cache_min_files": self.cache_min_files}


class StanfordCarsDataModule(DecodedImageDataModule):
    """Stanford Cars (Krause et al., 2013): torchvision's layout, or ``cars_train/`` + ``cars_test/`` image folders.

    Its download link is dead, so a missing dataset gets instructions instead of a download.
    """

    name = "stanford_cars"

    def __init__(
        self,
        root: str = "data",
        image_size: int = 64,
        channels: int = 3,
        flip: bool = True,
        cache_min_files: int | None = 0,
        **kwargs,
    ) -> None:
        super().__init__(
            root=root, image_size=image_size, channels=channels, flip=flip, cache_min_files=cache_min_files, **kwargs
        )

    def prepare_data(self) -> None:
        # Nothing can be downloaded: fail here, before any work, if a needed split is missing.
        for train in {"train": [True], "test": [False], "all": [True, False]}[self.split]:
            stanford_cars_files(self.root, train)
        if self.download:
            log.warning(
                "stanford_cars: dataset.download is ignored, the public download is gone. %s",
                CARS_HOW_TO_GET.format(root=self.root),
            )

    @property
    def class_names(self) -> list[str] | None:
        self.prepare_data()  # a missing dataset says so, not "no labels"
        return stanford_cars_class_names(self.root, self.split != "test")

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        files, labels, folder = stanford_cars_files(self.root, train)
        return load_files(files, labels, self.image_size, self.channels, self.on_error, folder, **self.cache_options())


class ImageFolderDataModule(DecodedImageDataModule):
    """Any folder tree of images; class sub-folders become labels, ``train/`` + ``test/`` sub-folders splits."""

    name = "image_folder"

    def __init__(self, root: str, image_size: int = 32, channels: int = 3, **kwargs) -> None:
        super().__init__(root=root, image_size=image_size, channels=channels, **kwargs)

    def prepare_data(self) -> None:
        if Path(self.root).is_file():
            raise DatasetError(f"image folder {self.root} is a file: set dataset.root to a folder of images")
        if not Path(self.root).is_dir():
            raise DatasetError(f"image folder {self.root} does not exist: set dataset.root to a folder of images")

    @property
    def class_names(self) -> list[str] | None:
        """The class sub-folders (of ``train/`` when the folder is split), sorted as the labels are."""
        self.prepare_data()  # a missing folder says so, not "no labels"
        root = Path(self.root)
        if (root / "train").is_dir() and (root / "test").is_dir():
            root = root / ("test" if self.split == "test" else "train")
        return index_image_folder(root)[2] or None

    def load_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        # A plain folder has no train/test halves unless it holds train/ and test/ sub-folders.
        root = Path(self.root)
        if (root / "train").is_dir() and (root / "test").is_dir():
            wanted = {"train": ["train"], "test": ["test"], "all": ["train", "test"]}[self.split]
            parts = [self._load_folder(root / s) for s in wanted]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return self._load_folder(root)

    def _load_folder(self, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, _ = load_image_folder(
            folder, self.image_size, self.channels, self.on_error, **self.cache_options()
        )
        return images, labels


def first_images(datamodule: pl.LightningDataModule, n: int) -> torch.Tensor | None:
    """The first ``n`` images of the first validation batch (training batch without validation), in [−1, 1], on CPU.

    Goes through the datamodule's own loaders and ``on_after_batch_transfer``, so any dataset option works.
    """
    for make_loader in (datamodule.val_dataloader, datamodule.train_dataloader):
        loader = make_loader()
        batch = next(iter(loader), None) if loader else None
        if batch is not None:
            return datamodule.on_after_batch_transfer(batch, 0)[0][:n].detach().cpu()
    return None
