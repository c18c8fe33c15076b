"""Any folder tree of images: class sub-folders become labels, ``train/`` + ``test/`` sub-folders the splits."""

from __future__ import annotations

from pathlib import Path

import torch

from ddpm_lab.data.base import DecodedImageDataModule
from ddpm_lab.data.decode import decode_labelled, folder_class_names, index_image_folder
from ddpm_lab.errors import DatasetError


def load_image_folder(
    root: str | Path, image_size: int, channels: int, on_error: str = "skip"
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode every image under ``root`` into memory (no cache). Sub-folders of ``root`` become class labels.

    ``on_error``: ``skip`` (warn and leave out unreadable files) or ``raise`` (stop, naming them).
    Returns images (N, C, S, S) uint8, labels (N,) int64 (−1 for files directly in ``root``) and the class names.
    """
    root = Path(root).expanduser()
    files, labels, classes = index_image_folder(root)
    images, targets, _ = decode_labelled(files, labels, image_size, channels, on_error, root)
    return images, targets, classes


class ImageFolderDataModule(DecodedImageDataModule):
    """Any folder tree of images; class sub-folders become labels, ``train/`` + ``test/`` sub-folders splits."""

    name = "image_folder"

    def __init__(self, root: str, image_size: int = 32, channels: int = 3, **kwargs) -> None:
        super().__init__(root=root, image_size=image_size, channels=channels, **kwargs)

    def check_files(self) -> None:
        if Path(self.root).is_file():
            raise DatasetError(f"image folder {self.root} is a file: set dataset.root to a folder of images")
        if not Path(self.root).is_dir():
            raise DatasetError(f"image folder {self.root} does not exist: set dataset.root to a folder of images")

    def split_parts(self) -> tuple[bool | None, ...]:
        # A plain folder has no train/test halves unless it holds train/ and test/ sub-folders.
        root = Path(self.root)
        return super().split_parts() if (root / "train").is_dir() and (root / "test").is_dir() else (None,)

    def folder(self, train: bool | None) -> Path:
        """The folder of one half (``train/``, ``test/``), or the whole folder (None)."""
        return Path(self.root) if train is None else Path(self.root) / ("train" if train else "test")

    def read_class_names(self, train: bool | None) -> list[str] | None:
        return folder_class_names(self.folder(train))

    def source_files(self, train: bool | None) -> tuple[list[Path], list[int]]:
        return index_image_folder(self.folder(train))[:2]

    def load(self, train: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
        folder = self.folder(train)
        files, labels, _ = index_image_folder(folder)
        return self.decode(files, labels, folder)
