"""Stanford Cars (Krause et al., 2013): torchvision's layout (``.mat`` annotations), or ``cars_train/`` +
``cars_test/`` image folders. Its public download is gone, so a missing dataset gets instructions instead."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torchvision.datasets import StanfordCars

from ddpm_lab.data.base import DecodedImageDataModule, missing_files_error
from ddpm_lab.data.decode import folder_class_names, index_image_folder

log = logging.getLogger(__name__)

CARS_HOW_TO_GET = (
    "Its public download (ai.stanford.edu) is gone, so dataset.download cannot fetch it: get cars_train.tgz, "
    "cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat from a mirror (e.g. Kaggle, "
    "'stanford-cars-dataset') and unpack them as {root}/stanford_cars/{{cars_train/, cars_test/, devkit/cars_meta.mat, "
    "devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat}} (torchvision's layout), or put the images in "
    "{root}/cars_train/ and {root}/cars_test/ (optionally one sub-folder per class)"
)
TORCHVISION_FILES = (
    "devkit/cars_meta.mat",
    "devkit/cars_train_annos.mat",
    "cars_test_annos_withlabels.mat",
    "cars_train/",
    "cars_test/",
)


def _split_folder_name(train: bool) -> str:
    return "cars_train" if train else "cars_test"


def _torchvision_cars(root: Path, train: bool) -> StanfordCars | None:
    """The split in torchvision's layout (a loader that returns the path: torchvision parses the .mat annotations,
    we decode in bulk); None when ``root`` is not in that layout."""
    base = root / "stanford_cars"
    if not (base / "devkit").is_dir():
        return None
    try:
        return StanfordCars(str(root), split="train" if train else "test", loader=Path)
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        raise missing_files_error(
            "Stanford Cars", base, list(TORCHVISION_FILES), CARS_HOW_TO_GET.format(root=root), e
        ) from e


def _image_folder(root: Path, train: bool) -> Path | None:
    """The split as a folder of images, ``root/cars_train/`` (or in ``root/stanford_cars/``); None: neither."""
    split = _split_folder_name(train)
    return next((f for f in (root / split, root / "stanford_cars" / split) if f.is_dir()), None)


def stanford_cars_class_names(root: str | Path, train: bool) -> list[str] | None:
    """The class names of a Stanford Cars split: ``devkit/cars_meta.mat`` in torchvision's layout, else the
    class sub-folders of ``cars_train/`` (or ``cars_test/``); None when the images have no classes."""
    root = Path(root).expanduser()
    ds = _torchvision_cars(root, train)
    if ds is not None:
        return [str(name) for name in ds.classes]
    folder = _image_folder(root, train)
    return folder_class_names(folder) if folder is not None else None


def stanford_cars_files(root: str | Path, train: bool) -> tuple[list[Path], list[int], Path]:
    """Files and labels of one Stanford Cars split, in torchvision's layout or as cars_train/ + cars_test/ folders.

    Returns (files, labels, folder the images are in).
    """
    root = Path(root).expanduser()
    ds = _torchvision_cars(root, train)
    if ds is not None:
        samples = [ds[i] for i in range(len(ds))]
        return [p for p, _ in samples], [int(c) for _, c in samples], root / "stanford_cars" / _split_folder_name(train)
    folder = _image_folder(root, train)
    if folder is not None:
        files, labels, _ = index_image_folder(folder)
        return files, labels, folder
    split = _split_folder_name(train)
    raise missing_files_error(
        "Stanford Cars",
        root,
        [f"stanford_cars/devkit/ + stanford_cars/{split}/", f"{split}/"],
        CARS_HOW_TO_GET.format(root=root),
    )


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

    def check_files(self) -> None:
        for train in self.split_parts():
            stanford_cars_files(self.root, train)

    def prepare_data(self) -> None:
        super().prepare_data()  # nothing can be downloaded: fail here, before any work, if a needed split is missing
        if self.download:
            log.warning(
                "stanford_cars: dataset.download is ignored, the public download is gone. %s",
                CARS_HOW_TO_GET.format(root=self.root),
            )

    def read_class_names(self, train: bool) -> list[str] | None:
        return stanford_cars_class_names(self.root, train)

    def source_files(self, train: bool) -> tuple[list[Path], list[int]]:
        return stanford_cars_files(self.root, train)[:2]

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        files, labels, folder = stanford_cars_files(self.root, train)
        return self.decode(files, labels, folder)
