"""Datasets as LightningDataModules (uint8 in memory, [−1, 1] floats on the device)."""

from ddpm_lab.data.datamodule import (
    CIFAR10DataModule,
    DecodedImageDataModule,
    DigitsDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    StanfordCarsDataModule,
    first_images,
)
from ddpm_lab.data.loader import InMemoryLoader
from ddpm_lab.errors import DatasetError

__all__ = [
    "CIFAR10DataModule",
    "DatasetError",
    "DecodedImageDataModule",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "InMemoryLoader",
    "MNISTDataModule",
    "StanfordCarsDataModule",
    "first_images",
]
