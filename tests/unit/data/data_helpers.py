"""What the data tests share: a data module made ready the way training does it, a small image-folder one, and
the parts of a trainer a data module reads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from ddpm_lab.data import ImageDataModule, ImageFolderDataModule


def ready(dm: ImageDataModule) -> ImageDataModule:
    """``prepare_data`` then ``setup("fit")``, as the trainer calls them."""
    dm.prepare_data()
    dm.setup("fit")
    return dm


def folder_module(root: Path, **kwargs) -> ImageFolderDataModule:
    """A ready image-folder module of 16 px images, no validation split, batches of 4 (``kwargs`` override)."""
    return ready(ImageFolderDataModule(root=str(root), **{"image_size": 16, "val_size": 0, "batch_size": 4, **kwargs}))


def fake_trainer(world_size: int = 1, global_rank: int = 0, training: bool = True) -> SimpleNamespace:
    """What the data module reads from its trainer: devices, rank, training state, device."""
    return SimpleNamespace(
        world_size=world_size,
        global_rank=global_rank,
        training=training,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
