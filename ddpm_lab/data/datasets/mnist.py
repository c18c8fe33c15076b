"""MNIST (LeCun et al., 1998): its IDX files in ``root/MNIST/raw``, read and downloaded by torchvision."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import MNIST
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import extract_archive

from ddpm_lab.data.base import ImageDataModule, missing_files_error
from ddpm_lab.errors import DatasetError

MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def mnist_files(root: str | Path, train: bool) -> list[Path]:
    """The IDX files one MNIST split is read from: the unpacked ones, else their ``.gz`` archives."""
    raw = Path(root).expanduser() / "MNIST" / "raw"
    paths = [raw / name for name in MNIST_FILES[train]]
    return paths if all(p.is_file() for p in paths) else [p.with_name(p.name + ".gz") for p in paths]


def load_mnist(root: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One MNIST split from its IDX files in ``root/MNIST/raw`` (raw or ``.gz``), read by torchvision's parser."""
    raw = Path(root).expanduser() / "MNIST" / "raw"
    paths = [raw / name for name in MNIST_FILES[train]]
    for path in paths:
        gz = path.with_name(path.name + ".gz")
        if not path.is_file() and gz.is_file():
            extract_archive(str(gz), str(raw))  # what torchvision's download does after fetching
    if not all(p.is_file() for p in paths):
        raise missing_files_error(
            "MNIST",
            raw,
            [f"{n}(.gz)" for n in MNIST_FILES[train]],
            "Set dataset.download=true on a machine with internet, "
            "or copy the files there and set dataset.download=false",
        )
    try:
        images, labels = read_image_file(str(paths[0])), read_label_file(str(paths[1]))
    except (AssertionError, RuntimeError, ValueError) as e:
        raise DatasetError(
            f"MNIST files in {raw} are corrupt ({type(e).__name__}: {e}): delete them and download again"
        ) from e
    if len(images) != len(labels):
        raise DatasetError(
            f"MNIST in {raw}: {len(images)} images but {len(labels)} labels: delete the files and download again"
        )
    return images.unsqueeze(1).contiguous(), labels.long()


class MNISTDataModule(ImageDataModule):
    """MNIST (LeCun et al.) from its IDX files in ``root/MNIST/raw``; downloaded by torchvision in ``prepare_data``."""

    name = "mnist"
    classes = tuple(str(digit) for digit in range(10))

    def __init__(
        self, root: str = "data", image_size: int = 28, channels: int = 1, cache_min_files: int | None = 0, **kwargs
    ) -> None:
        super().__init__(root=root, image_size=image_size, channels=channels, cache_min_files=cache_min_files, **kwargs)

    def fetch(self) -> None:
        MNIST(self.root, download=True)

    def how_to_get(self) -> str:
        raw = Path(self.root) / "MNIST" / "raw"
        return f"Copy the four IDX files (train-/t10k-images-idx3-ubyte, -labels-idx1-ubyte, .gz or not) into {raw}"

    def source_files(self, train: bool) -> tuple[list[Path], None]:
        return mnist_files(self.root, train), None

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return load_mnist(self.root, train=train)
