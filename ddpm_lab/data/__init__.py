"""Datasets as LightningDataModules (uint8 in memory, [−1, 1] floats on the device).

Adding a dataset: one module in ``data/datasets/`` (its reader and an :class:`ImageDataModule` subclass), its
entry in :data:`DATASETS` (and ``ddpm_lab.artifacts.allow_list.DATASET_TARGETS``), and ``configs/dataset/<name>.yaml``.
"""

from ddpm_lab.data.base import DecodedImageDataModule, ImageDataModule, first_images
from ddpm_lab.data.datasets.cifar10 import CIFAR10DataModule
from ddpm_lab.data.datasets.digits import DigitsDataModule
from ddpm_lab.data.datasets.image_folder import ImageFolderDataModule
from ddpm_lab.data.datasets.mnist import MNISTDataModule
from ddpm_lab.data.datasets.stanford_cars import StanfordCarsDataModule
from ddpm_lab.data.datasets.streaming import StreamingDataModule
from ddpm_lab.data.loader import InMemoryLoader
from ddpm_lab.errors import DatasetError

# The ``_target_`` a dataset config (and a stored run config) names -> its class.
DATASETS: dict[str, type[ImageDataModule]] = {
    f"{__name__}.{cls.__name__}": cls
    for cls in (
        MNISTDataModule,
        CIFAR10DataModule,
        StanfordCarsDataModule,
        ImageFolderDataModule,
        DigitsDataModule,
        StreamingDataModule,
    )
}

__all__ = [
    "CIFAR10DataModule",
    "DATASETS",
    "DatasetError",
    "DecodedImageDataModule",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "InMemoryLoader",
    "MNISTDataModule",
    "StanfordCarsDataModule",
    "StreamingDataModule",
    "first_images",
]
