"""Datasets as LightningDataModules (uint8 in memory, [−1, 1] floats on the device)."""

from ddpm_lab.data.datamodule import ImageDataModule, ImageFolderDataModule, MNISTDataModule
from ddpm_lab.data.loader import InMemoryLoader
from ddpm_lab.data.sources import DatasetError

__all__ = [
    "DatasetError",
    "ImageDataModule",
    "ImageFolderDataModule",
    "InMemoryLoader",
    "MNISTDataModule",
]
