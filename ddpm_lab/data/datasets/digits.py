"""scikit-learn's 8x8 digits (UCI "Optical Recognition of Handwritten Digits", test part): 1,797 images with 17 grey
levels (0-16), read from a file inside the installed scikit-learn, so they work offline on any machine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ddpm_lab.data.base import ImageDataModule
from ddpm_lab.errors import DatasetError

# The first DIGITS_TRAIN images are our "train" split, the rest "test".
DIGITS_TRAIN = 1500
DIGITS_LEVELS = 16


def load_digits(train: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as (N, 1, 8, 8) uint8 and (N,) labels: read from a file inside the installed
    package, never downloaded. ``train``: the first 1,500 (True), the other 297 (False), or all (None)."""
    try:  # an optional dependency: imported here, so that only dataset=digits needs it
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise DatasetError(
            "dataset=digits needs scikit-learn (its images ship inside it): pip install scikit-learn"
        ) from e
    x, y = sklearn_digits(return_X_y=True)
    images = torch.from_numpy(x).reshape(-1, 1, 8, 8).mul(255 / DIGITS_LEVELS).round().to(torch.uint8)
    labels = torch.from_numpy(y).long()
    part = slice(None) if train is None else slice(None, DIGITS_TRAIN) if train else slice(DIGITS_TRAIN, None)
    return images[part].contiguous(), labels[part]


def digits_file() -> Path | None:
    """The file scikit-learn ships the digits in (what the decoded cache is keyed on); None without scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


class DigitsDataModule(ImageDataModule):
    """scikit-learn's 1,797 handwritten 8x8 digits (UCI), upsampled to ``image_size``: ships inside scikit-learn,
    so it works offline on any machine (the quick start). ``train``: the first 1,500 images, ``test``: the rest."""

    name = "digits"
    classes = tuple(str(digit) for digit in range(10))

    def __init__(
        self,
        root: str = "scikit-learn",
        image_size: int = 16,
        channels: int = 1,
        split: str = "all",
        cache_min_files: int | None = 0,
        **kwargs,
    ) -> None:
        kwargs["download"] = False  # nothing to fetch: the file is part of the installed package
        super().__init__(
            root=root, image_size=image_size, channels=channels, split=split, cache_min_files=cache_min_files, **kwargs
        )

    def source_files(self, train: bool | None) -> tuple[list[Path], None] | None:
        file = digits_file()
        return None if file is None else ([file], None)

    def load(self, train: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
        return load_digits(train)
