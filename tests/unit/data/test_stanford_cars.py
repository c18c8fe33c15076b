"""dataset=stanford_cars (data/datasets/stanford_cars.py): torchvision's layout (.mat annotations) and
cars_train/ + cars_test/ folders, both on fake data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from data_helpers import ready
from ddpm_lab.data import DatasetError, StanfordCarsDataModule


def _write_jpegs(folder: Path, n: int, start: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    names = []
    for i in range(start, start + n):
        h, w = rng.integers(20, 40, 2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
        names.append(f"{i:05d}.jpg")
    return names


def write_stanford_cars(root: Path, n_train: int = 8, n_test: int = 6) -> Path:
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    scipy.io.savemat(
        base / "devkit" / "cars_meta.mat", {"class_names": np.array(["car a", "car b", "car c"], dtype=object)}
    )
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    for split, n, mat in (
        ("train", n_train, base / "devkit" / "cars_train_annos.mat"),
        ("test", n_test, base / "cars_test_annos_withlabels.mat"),
    ):
        names = _write_jpegs(base / f"cars_{split}", n, start=0 if split == "train" else 100)
        annos = np.array([(1, 1, 10, 10, i % 3 + 1, name) for i, name in enumerate(names)], dtype=fields)
        scipy.io.savemat(mat, {"annotations": annos})
    return root


def test_stanford_cars_torchvision_layout_and_cache(tmp_path: Path) -> None:
    root, cache = write_stanford_cars(tmp_path / "data"), tmp_path / "cache"
    before = sorted(p for p in root.rglob("*"))

    def cars(**kwargs):
        return ready(StanfordCarsDataModule(root=str(root), val_size=0, cache_dir=str(cache), **kwargs))

    dm = cars(split="all", image_size=16)
    assert dm.train_images.shape == (14, 3, 16, 16) and dm.flip
    assert sorted(dm.train_labels.tolist()) == sorted([i % 3 for i in range(8)] + [i % 3 for i in range(6)])
    caches = sorted((cache / "decoded").glob("*.u8"))
    assert len(caches) == 1 and not list((cache / "decoded").glob(".*.tmp-*"))  # one file for the split
    again = cars(split="all", image_size=16)
    assert torch.equal(again.train_images, dm.train_images)  # read back from the cache
    # Another size, or a changed file, is a new cache entry, never a stale one.
    cars(split="train", image_size=8)
    _write_jpegs(root / "stanford_cars" / "cars_train", 1, start=7)  # rewrite 00007.jpg
    cars(split="train", image_size=16)
    assert len(list((cache / "decoded").glob("*.u8"))) == 3
    assert sorted(p for p in root.rglob("*")) == before  # nothing written into the dataset's folder


def test_stanford_cars_folder_layout(tmp_path: Path) -> None:
    _write_jpegs(tmp_path / "cars_train", 10)
    _write_jpegs(tmp_path / "cars_test", 4, start=50)
    dm = ready(StanfordCarsDataModule(root=str(tmp_path), split="test", val_size=0, batch_size=2))
    assert dm.train_images.shape == (4, 3, 64, 64) and (dm.train_labels == -1).all()
    dm = ready(StanfordCarsDataModule(root=str(tmp_path), split="all", image_size=16, val_size=0.25))
    assert (len(dm.train_images), len(dm.val_images)) == (11, 3)


def test_stanford_cars_missing_gives_instructions(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"Stanford Cars not found.*cars_train.*download.*gone.*cars_test_annos_withlabels"
    ):
        StanfordCarsDataModule(root=str(tmp_path)).prepare_data()


def test_stanford_cars_unreadable_image_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_stanford_cars(tmp_path)
    (tmp_path / "stanford_cars" / "cars_train" / "00003.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        dm = ready(StanfordCarsDataModule(root=str(tmp_path), image_size=16, val_size=0, cache_min_files=None))
    assert len(dm.train_images) == 7 and "00003.jpg" in caplog.text
    with pytest.raises(DatasetError, match="00003.jpg"):
        ready(StanfordCarsDataModule(root=str(tmp_path), image_size=16, on_error="raise", cache_min_files=None))
