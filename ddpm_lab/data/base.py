"""What every ``dataset`` option shares: checking its settings, picking the split, keeping it in the shared decoded
cache, holding out validation images, serving uint8 batches that become [−1, 1] floats on the device, and naming the
classes.

A dataset (one module in ``data/datasets/``) subclasses :class:`ImageDataModule` and supplies ``load``, the files it
reads (``source_files``, what its decoded cache is keyed on) and, where it has them, its class names; datasets of
image files subclass :class:`DecodedImageDataModule`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch

from ddpm_lab.artifacts.cache_dir import DECODED, cache_folder
from ddpm_lab.artifacts.classes import check_class_names, label_map, natural_order
from ddpm_lab.artifacts.images import to_model_range
from ddpm_lab.data.augment import augment_dim, augment_images
from ddpm_lab.data.decode import ON_ERROR, decode_labelled, fit_images, report_bad_files
from ddpm_lab.data.decoded_cache import Decoded, cache_key, cache_path, shared_cache
from ddpm_lab.data.loader import InMemoryLoader
from ddpm_lab.data.rows import Rows
from ddpm_lab.errors import ConfigError, DatasetError, check_choice, check_flag, check_number

log = logging.getLogger(__name__)

# dataset.split -> the halves ``load`` is asked for, in order (True: the train half, False: the test half).
SPLITS: dict[str, tuple[bool, ...]] = {"train": (True,), "test": (False,), "all": (True, False)}


def missing_files_error(
    name: str, folder: Path, expected: Sequence[str], how: str, cause: Exception | None = None
) -> DatasetError:
    """The one message for a dataset that is not on disk: which folder, which files, how to get them."""
    reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return DatasetError(f"{name} not found in {folder}{reason}: expected {', '.join(expected)}. {how}")


class ImageDataModule(pl.LightningDataModule):
    """Base for every ``dataset`` option: decode once into memory, split off a validation set, serve batches.

    Args:
        root: where the data lives (or is downloaded to).
        image_size: side of the square images served (resize shorter side + center-crop).
        channels: 1 (grayscale) or 3 (RGB); images are converted to match.
        batch_size: the global batch, split evenly across devices.
        val_size: held-out images for ``val/loss`` (an int, or a fraction in (0, 1)).
        split: ``train``, ``test`` or ``all`` (both).
        flip: random horizontal flips (on the device, per batch, training only), which the model learns to draw.
        augment: non-leaky augmentation (EDM's): each of a flip, a translation and (``augment_rotate``) a quarter
            turn is applied to a training image with this probability, and what was applied goes to the network
            as conditioning, so samples are not augmented (:mod:`ddpm_lab.data.augment`); 0 = off.
        augment_rotate: add quarter turns to ``augment`` (for data without an up, e.g. textures).
        download: fetch missing files in ``prepare_data`` (datasets that can be downloaded).
        on_device: keep the uint8 tensors on the training device (GPU), so batches are sliced there.
        seed: fixes the validation split and the shuffling order; ``None`` draws a fresh one (nondeterministic).
        class_names: the label order, label k being ``class_names[k]`` (every class of the data must be listed);
            ``None``: the dataset's fixed names, else its class folders in natural order (see :attr:`class_names`).
        cache_min_files: a split read from at least this many files is kept decoded in one file under
            ``<cache_dir>/decoded/`` (keyed on the files' contents, size and channels), which every process of the
            machine memory-maps: decoded once, one copy in RAM however many ranks; null: never (each process
            reads the files into its own memory).
        cache_dir: our cache folder (``paths.cache_dir``); null: ``$XDG_CACHE_HOME/ddpm_lab`` or
            ``~/.cache/ddpm_lab``. Never the dataset's own folder.
    """

    name = "images"
    # The names of labels 0, 1, ... when they are fixed (MNIST's digits); None: read from disk, or unlabeled.
    classes: tuple[str, ...] | None = None

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
        augment: float = 0.0,
        augment_rotate: bool = False,
        class_names: Sequence[str] | None = None,
        cache_min_files: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        channels = check_choice(channels, "dataset.channels", (1, 3))
        image_size = check_number(image_size, "dataset.image_size", int, low=1)
        batch_size = check_number(batch_size, "dataset.batch_size", int, low=1)
        val_size = check_number(val_size, "dataset.val_size", float, low=0)
        check_choice(split, "dataset.split", tuple(SPLITS))
        flip, download, on_device, augment_rotate = (
            check_flag(value, f"dataset.{key}")
            for key, value in (
                ("flip", flip),
                ("download", download),
                ("on_device", on_device),
                ("augment_rotate", augment_rotate),
            )
        )
        self.augment = check_number(augment, "dataset.augment", float, 0, 1)
        self.augment_rotate = augment_rotate
        seed = check_number(seed, "dataset.seed", int, optional=True)
        check_number(cache_min_files, "dataset.cache_min_files", int, low=0, optional=True)
        if cache_dir is not None and not isinstance(cache_dir, (str, Path)):
            raise ConfigError(f"dataset.cache_dir={cache_dir!r} is not a folder: set paths.cache_dir=<folder>")
        if seed is None:  # seed: null (the run's documented nondeterministic mode)
            seed = random.SystemRandom().randrange(2**31)
        if root is None or str(root) == "":
            raise ConfigError("dataset.root is not set: set dataset.root=<folder of the dataset>")
        self.root = str(Path(root).expanduser())
        self.image_size, self.channels = image_size, channels
        self.batch_size, self.val_size, self.split = batch_size, val_size, split
        self.flip, self.download, self.on_device, self.seed = flip, download, on_device, seed
        self.given_class_names = check_class_names(class_names)
        self._names: dict[bool | None, list[str] | None] | None = None  # each half's own names, read once
        self.train_images: Rows | None = None
        self.cache_min_files, self.cache_dir = cache_min_files, cache_folder(cache_dir)

    # -- what a dataset supplies -------------------------------------------------------------------
    def load(self, train: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (N, C, H, W) uint8 images at any size and (N,) labels (−1: unlabeled) for one half of the
        dataset: train (True), test (False), or the whole of one without halves (None, see :meth:`split_parts`)."""
        raise NotImplementedError

    def read_class_names(self, train: bool | None) -> list[str] | None:
        """The class names stored with the data (for datasets without fixed :attr:`classes`); None: unlabeled."""
        return None

    def source_files(self, train: bool | None) -> tuple[list[Path], list[int] | None] | None:
        """The files one half is read from, and each file's label when a file is one image: what the decoded cache
        is keyed on (their contents). None: this dataset is never cached."""
        return None

    def report_unreadable(self, bad: Sequence[str], kept: int) -> None:
        """Apply ``dataset.on_error`` to the unreadable files a cached split recorded (datasets of image files)."""

    def check_files(self) -> None:
        """Raise a DatasetError, before any work, when the split's files are not there (by default ``load`` does)."""

    def fetch(self) -> None:
        """Download the files (called by ``prepare_data`` when ``download`` is on); nothing to do by default."""

    def how_to_get(self) -> str:
        return f"Copy the {self.name} files into {self.root}"

    # -- shared --------------------------------------------------------------------------------------
    def half_class_names(self, train: bool | None) -> list[str] | None:
        """The names of the labels :meth:`load` returns for one half: the fixed :attr:`classes`, else those stored
        with that half (read once, without decoding any image; a dataset not on disk says so)."""
        if self.classes is not None:
            return list(self.classes)
        if self._names is None:
            self.check_files()
            self._names = {train: self.read_class_names(train) for train in self.split_parts()}
        return self._names[train] if train in self._names else self.read_class_names(train)

    @property
    def class_names(self) -> list[str] | None:
        """The one mapping of this data: label k is ``class_names[k]`` (what ``conditioning=class`` conditions on and
        every checkpoint stores); None: unlabeled. ``dataset.class_names`` when given, else the halves' own names
        when they agree (fixed names, a devkit's order, class folders in natural order), else the natural order of
        all of them: a class missing from one half never shifts the others' labels (:meth:`load_split`)."""
        halves = [self.half_class_names(train) for train in self.split_parts()]
        found = [name for names in halves for name in names or []]
        if self.given_class_names is not None:
            unknown = [name for name in found if name not in self.given_class_names]
            if unknown or not found:
                has = f"a class {unknown[0]!r} that it does not list" if unknown else "no class labels"
                raise DatasetError(
                    f"dataset.class_names={self.given_class_names} but {self.name} under {self.root} has {has}: "
                    "list every class folder in label order, or leave dataset.class_names out"
                )
            return list(self.given_class_names)
        if not found:
            return None
        return halves[0] if all(names == halves[0] for names in halves) else natural_order(found)

    def split_parts(self) -> tuple[bool | None, ...]:
        """The halves ``dataset.split`` asks :meth:`load` for, in order."""
        return SPLITS[self.split]

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

    def read_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The images of ``dataset.split`` at ``image_size`` and ``channels``, and their labels in the order of
        :attr:`class_names` (each half's labels mapped by name), read from the dataset's files into this process's
        memory."""
        names = self.class_names
        parts = [(self.load(train), train) for train in self.split_parts()]
        images = [fit_images(part[0], self.image_size, self.channels) for part, _ in parts]
        labels = [self.relabelled(part[1], self.half_class_names(train), names) for part, train in parts]
        if len(parts) == 1:  # no copy of a large dataset
            return images[0], labels[0]
        return torch.cat(images), torch.cat(labels)

    @staticmethod
    def relabelled(labels: torch.Tensor, half: list[str] | None, names: list[str] | None) -> torch.Tensor:
        """``labels`` (−1: none) of a half whose classes are ``half``, as indices into ``names``."""
        if names is None or half is None or half == names:
            return labels
        table = label_map(half, names)
        return torch.where(labels >= 0, table[labels.clamp(min=0)], labels)

    def decode_split(self) -> Decoded:
        """:meth:`read_split`, with the files it could not decode (kept with the cache, reported by later runs)."""
        self.unreadable: list[str] = []
        images, labels = self.read_split()
        return Decoded(images, labels, list(self.unreadable))

    def cache_file(self) -> tuple[Path, str] | None:
        """The decoded cache file of this split and its key, or None when the split is not cached."""
        if self.cache_min_files is None:
            return None
        sources = [self.source_files(train) for train in self.split_parts()]
        if any(source is None for source in sources):
            return None
        files = [file for source in sources for file in source[0]]
        if len(files) < self.cache_min_files:
            return None
        labels = None if any(source[1] is None for source in sources) else [i for s in sources for i in s[1]]
        description = {"dataset": self.name, "split": self.split, "image_size": self.image_size, "ch": self.channels}
        description["class_names"] = self.class_names  # the cached labels are indices into them
        key = cache_key(description, files, labels, Path(self.root))
        name = f"{self.name}-{Path(self.root).name}"
        return cache_path(cache_folder(self.cache_dir, DECODED), name, self.image_size, self.channels, key), key

    def load_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The images of ``dataset.split`` at ``image_size`` and ``channels``, and their labels: memory-mapped from
        the shared decoded cache when the split is cached (decoded by the first process that needs it), else read."""
        cached = self.cache_file()
        if cached is None:
            return self.read_split()
        decoded, fresh = shared_cache(*cached, self.image_size, self.channels, self.decode_split)
        if not fresh:  # decoding reported them as it went
            self.report_unreadable(decoded.bad, len(decoded.images))
        return decoded.images, decoded.labels

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
        if self.on_device and self.trainer is not None:  # slice batches where they are used: no copies per step
            device = self.trainer.strategy.root_device
            images, labels = images.to(device), labels.to(device)
        # Index, never copy: a memory-mapped split stays one copy in RAM for every process of the machine.
        self.val_images, self.val_labels = Rows(images, perm[:n_val]), labels[perm[:n_val].to(labels.device)]
        self.train_images, self.train_labels = Rows(images, perm[n_val:]), labels[perm[n_val:].to(labels.device)]
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

    @property
    def augment_dim(self) -> int:
        """The length of the augmentation labels the network is conditioned on; 0 without ``augment``."""
        return augment_dim(self.augment_rotate) if self.augment > 0 else 0

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        """Training batches as (images in [−1, 1], labels) and, with ``augment``, their augmentation labels third;
        validation batches are never augmented."""
        images, labels = batch
        images = to_model_range(images)
        training = self.trainer is not None and self.trainer.training
        if self.flip and training:
            mask = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(mask[:, None, None, None], images.flip(-1), images)
        if self.augment > 0 and training:
            images, augment_labels = augment_images(images, self.augment, self.augment_rotate)
            return images, labels, augment_labels
        return images, labels


class DecodedImageDataModule(ImageDataModule):
    """Base for datasets of image files: decoded once on a thread pool, then kept in the shared decoded cache.

    Nothing is downloaded: ``prepare_data`` only checks that the files are there.

    Args:
        on_error: unreadable files are ``skip``-ped with a warning naming them, or ``raise`` stops the run.
        cache_min_files: a split of at least this many files is kept decoded under ``<cache_dir>/decoded/``
            (see :class:`ImageDataModule`); null: never.
    """

    def __init__(self, on_error: str = "skip", cache_min_files: int | None = 5000, **kwargs) -> None:
        check_choice(on_error, "dataset.on_error", ON_ERROR)
        kwargs.setdefault("download", False)
        super().__init__(cache_min_files=cache_min_files, **kwargs)
        self.on_error = on_error

    def prepare_data(self) -> None:
        self.check_files()

    def decode(self, files: Sequence[Path], labels: Sequence[int], where: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """``files`` (labelled ``labels``, found under ``where``) decoded at this module's size and channels; the
        unreadable ones are reported (``dataset.on_error``) and recorded for the decoded cache."""
        images, targets, bad = decode_labelled(files, labels, self.image_size, self.channels, self.on_error, where)
        getattr(self, "unreadable", []).extend(bad)
        return images, targets

    def report_unreadable(self, bad: Sequence[str], kept: int) -> None:
        report_bad_files(bad, Path(self.root), self.on_error, kept)


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
