"""Shards written by ``python -m ddpm_lab.shards`` (a local folder or an object-store URL), read by litdata's
``StreamingDataset``/``StreamingDataLoader``: datasets of any size (chunks are read, or downloaded, as they are
needed), shuffled across ranks and nodes, and resumable mid-epoch (Lightning stores the loader's state in every
checkpoint and gives it back on resume). Needs ``pip install "ddpm_lab[streaming]"``."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ddpm_lab.artifacts.cache_dir import cache_folder
from ddpm_lab.data.base import ImageDataModule
from ddpm_lab.data.shards import ShardInfo, check_info, import_litdata, is_remote, part_dir, read_info
from ddpm_lab.errors import DatasetError, check_number

log = logging.getLogger(__name__)


class Collate:
    """litdata items -> a ``(uint8 images, labels)`` batch, each item checked against the shards' description
    (shards are read from disk or a bucket: untrusted)."""

    def __init__(self, info: ShardInfo, root: str) -> None:
        self.shape = (info.channels, info.image_size, info.image_size)
        self.classes = len(info.class_names) if info.class_names else 0
        self.root = root

    def __call__(self, items: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = [torch.as_tensor(np.asarray(item["image"])) for item in items]
        labels = torch.tensor([int(item["label"]) for item in items], dtype=torch.long)
        for image in images:
            if image.dtype != torch.uint8 or tuple(image.shape) != self.shape:
                raise DatasetError(
                    f"a shard item in {self.root} is a {tuple(image.shape)} {image.dtype} image, not the "
                    f"{self.shape} uint8 its ddpm_lab.json promises: write the shards again"
                )
        if len(labels) and (labels.min() < -1 or (self.classes and labels.max() >= self.classes)):
            raise DatasetError(f"a shard item in {self.root} has label {labels.max()} outside its classes")
        return torch.stack(images), labels


class ShardImages:
    """The training images of the shards by index, read when asked for (the FID callback's real images, the
    start-up summary): ``len``, ``shape``, ``dtype`` and ``images[idx]`` like the in-memory datasets' splits."""

    def __init__(self, dataset: Any, info: ShardInfo, collate: Collate) -> None:
        self.dataset, self.collate = dataset, collate
        self.shape = torch.Size((len(dataset), info.channels, info.image_size, info.image_size))
        self.dtype, self.device = torch.uint8, torch.device("cpu")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> torch.Tensor:
        positions = torch.arange(len(self))[idx]
        if positions.dim() == 0:
            return self.collate([self.dataset[int(positions)]])[0][0]
        return self.collate([self.dataset[int(i)] for i in positions])[0]

    def labels(self) -> torch.Tensor:
        return self.collate([self.dataset[i] for i in range(len(self))])[1]


def resumable_loader(dataset: Any, **kwargs: Any) -> Any:
    """litdata's ``StreamingDataLoader``, continuing a restored epoch once and then starting fresh ones.

    After ``load_state_dict`` litdata replays the saved epoch from where it stopped, and clears its ``restore`` flag
    only when that pass runs to its end. Lightning ends an epoch after ``len(loader)`` batches without exhausting
    the iterator, so the flag stayed set and the next epoch replayed the saved one again: here every pass after
    the continued one is a new epoch.
    """
    litdata = import_litdata()

    class ResumableLoader(litdata.StreamingDataLoader):
        continuing = False

        def load_state_dict(self, obj: dict[str, Any]) -> None:
            super().load_state_dict(obj)
            self.continuing = self.restore  # the next pass continues the saved epoch

        def __iter__(self) -> Any:
            if self.restore and not self.continuing:
                self.restore = False  # the continued epoch has been served: a new one starts
            self.continuing = False
            yield from super().__iter__()

    return ResumableLoader(dataset, **kwargs)


class StreamingDataModule(ImageDataModule):
    """Train from litdata shards (``python -m ddpm_lab.shards`` writes them): ``root/train`` shuffled by litdata
    across every rank and node, ``root/val`` for ``val/loss``; image size, channels and class names come with them
    (``root/ddpm_lab.json``) and are checked against the config before any work.

    Args:
        root: the shards' folder, or an object-store URL (``s3://bucket/shards``, passed to litdata).
        val_size: validation images used from ``root/val`` (at most this many; a fraction in (0, 1) of them).
        num_workers: loader worker processes (0: batches are read in the training process).
        cache_dir: our cache folder; remote shards' chunks are downloaded below ``<cache_dir>/shards/``.
    """

    name = "streaming"

    def __init__(
        self,
        root: str,
        image_size: int,
        channels: int,
        batch_size: int = 128,
        val_size: float = 1000,
        flip: bool = False,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(
            root=root,
            image_size=image_size,
            channels=channels,
            batch_size=batch_size,
            val_size=val_size,
            flip=flip,
            download=False,
            seed=seed,
            cache_dir=cache_dir,
        )
        self.num_workers = check_number(num_workers, "dataset.num_workers", int, low=0)
        if is_remote(root):
            self.root = str(root)  # a URL, not a path to expand
        import_litdata()  # one line when it is missing
        self.info = read_info(self.root, self.cache_dir)
        check_info(self.info, self.root, self.image_size, self.channels)
        self.collate = Collate(self.info, self.root)

    @property
    def class_names(self) -> list[str] | None:
        return list(self.info.class_names) if self.info.class_names else None

    def check_files(self) -> None:
        read_info(self.root, self.cache_dir)

    def _dataset(self, part: str, shuffle: bool) -> Any:
        litdata = import_litdata()
        cache = None
        if is_remote(self.root):  # chunks are downloaded into our cache folder, one sub-folder per URL
            digest = hashlib.blake2b(self.root.encode(), digest_size=8).hexdigest()
            cache = str(cache_folder(self.cache_dir, "shards") / digest / part)
        return litdata.StreamingDataset(part_dir(self.root, part), cache_dir=cache, shuffle=shuffle, seed=self.seed)

    def setup(self, stage: str | None = None) -> None:
        """Open the shards (here, after the processes are started: litdata reads the rank and world size then)."""
        if self.train_images is not None:
            return
        self.train_set = self._dataset("train", shuffle=not self.overfitting)
        self.val_set, self.val_images = None, None
        n_val = int(self.val_size * self.info.val) if 0 < self.val_size < 1 else int(min(self.val_size, self.info.val))
        if n_val > 0:
            val = self._dataset("val", shuffle=False)
            self.val_set = val if n_val >= len(val) else val.subset(list(range(n_val)))
            self.val_images = ShardImages(self.val_set, self.info, self.collate)
        self.train_images = ShardImages(self._dataset("train", shuffle=False), self.info, self.collate)
        log.info(
            "%s: %d train / %d val images of %s in %s",
            self.name,
            len(self.train_images),
            0 if self.val_images is None else len(self.val_images),
            tuple(self.train_images.shape[1:]),
            self.root,
        )

    @property
    def train_labels(self) -> torch.Tensor:
        """Every training label (reads every item: only ``features=classifier`` asks for them)."""
        return self.train_images.labels()

    def _loader(self, dataset: Any, shuffle: bool, drop_last: bool) -> Any:
        return resumable_loader(
            dataset,
            batch_size=self.per_device_batch_size(),
            num_workers=self.num_workers,
            shuffle=shuffle,
            drop_last=drop_last,
            collate_fn=self.collate,
            # A DataLoader draws its workers' base seed from this generator when iterated: without one it would
            # draw from the global RNG, whose state the checkpoint restores, and a resumed run would diverge.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> Any:
        loader = self._loader(self.train_set, shuffle=not self.overfitting, drop_last=True)
        if len(loader) < 1:
            raise DatasetError(
                f"{self.name}: {len(self.train_set)} training images in {self.root} are fewer than one batch "
                f"(dataset.batch_size={self.batch_size}): lower the batch size or write more images"
            )
        return loader

    def val_dataloader(self) -> Any:
        return [] if self.val_set is None else self._loader(self.val_set, shuffle=False, drop_last=False)

    def read_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every training image and label in memory (``evaluate``'s real images): fine for CIFAR-sized shards."""
        images = ShardImages(self._dataset("train", shuffle=False), self.info, self.collate)
        return images[:], images.labels()

    def load_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.read_split()
