"""Image folders (data/datasets/image_folder.py): class sub-folders as labels, train/ + test/ as splits, an empty or
missing folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_helpers import folder_module
from ddpm_lab.data import DatasetError, ImageFolderDataModule
from helpers import write_image_folder


def test_image_folder_labels_channels_and_splits(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "flat", n_per_class=5, classes=("cat", "dog"))
    dm = folder_module(tmp_path / "flat", channels=1)
    assert dm.train_images.shape == (10, 1, 16, 16) and sorted(dm.train_labels.tolist()) == [0] * 5 + [1] * 5
    write_image_folder(tmp_path / "gray", n_per_class=3, classes=("x",), mode="L")
    assert folder_module(tmp_path / "gray", channels=3).train_images.shape == (3, 3, 16, 16)
    write_image_folder(tmp_path / "split" / "train", n_per_class=6)
    write_image_folder(tmp_path / "split" / "test", n_per_class=2)
    sizes = {s: len(folder_module(tmp_path / "split", split=s).train_images) for s in ("train", "test", "all")}
    assert sizes == {"train": 12, "test": 4, "all": 16}


def test_empty_and_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"empty holds no images"):
        folder_module(tmp_path / "empty")
    with pytest.raises(DatasetError, match=r"nowhere does not exist"):
        ImageFolderDataModule(root=str(tmp_path / "nowhere")).prepare_data()
