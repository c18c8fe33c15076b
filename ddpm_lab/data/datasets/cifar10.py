"""CIFAR-10 (Krizhevsky, 2009): its pickled batches in ``root/cifar-10-batches-py``, read and downloaded by
torchvision (which md5-checks every file)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import CIFAR10

from ddpm_lab.data.base import ImageDataModule, missing_files_error

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


def load_cifar10(root: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 split from its pickled batches in ``root/cifar-10-batches-py`` via torchvision (md5-checked)."""
    try:
        ds = CIFAR10(str(Path(root).expanduser()), train=train, download=False)
    except RuntimeError as e:  # "Dataset not found or corrupted": a missing file or a wrong md5
        folder = Path(root).expanduser() / CIFAR10.base_folder
        expected = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
        raise missing_files_error(
            "CIFAR-10 (or a file of it with a wrong md5)",
            folder,
            expected,
            f"Set dataset.download=true on a machine with internet, or unpack {CIFAR10.url} into {folder.parent} "
            "and set dataset.download=false",
        ) from e
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def cifar10_files(root: str | Path, train: bool) -> list[Path]:
    """The pickled batches one CIFAR-10 split is read from (and the meta file with the class names)."""
    folder = Path(root).expanduser() / CIFAR10.base_folder
    batches = CIFAR10.train_list if train else CIFAR10.test_list
    return [folder / name for name, _ in batches] + [folder / CIFAR10.meta["filename"]]


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (Krizhevsky, 2009) from its pickled batches in ``root/cifar-10-batches-py`` via torchvision."""

    name = "cifar10"
    classes = CIFAR10_CLASSES

    def __init__(
        self,
        root: str = "data",
        image_size: int = 32,
        channels: int = 3,
        flip: bool = True,
        cache_min_files: int | None = 0,
        **kwargs,
    ) -> None:
        super().__init__(
            root=root, image_size=image_size, channels=channels, flip=flip, cache_min_files=cache_min_files, **kwargs
        )

    def fetch(self) -> None:
        CIFAR10(self.root, download=True)

    def how_to_get(self) -> str:
        return f"Unpack {CIFAR10.url} into {self.root} (it makes cifar-10-batches-py/)"

    def source_files(self, train: bool) -> tuple[list[Path], None]:
        return cifar10_files(self.root, train), None

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return load_cifar10(self.root, train=train)
