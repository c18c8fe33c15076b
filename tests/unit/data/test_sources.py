"""The dataset options on fake data written in each real on-disk format (IDX, CIFAR pickles, Stanford Cars .mat)."""

from __future__ import annotations

import gzip
import hashlib
import logging
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, MNIST

from ddpm_lab.data import CIFAR10DataModule, DatasetError, MNISTDataModule, StanfordCarsDataModule


def _setup(dm):
    dm.prepare_data()
    dm.setup("fit")
    return dm


# -- MNIST: IDX files in MNIST/raw ------------------------------------------------------------------------------
def write_mnist(root: Path, n_train: int = 30, n_test: int = 20, gz: bool = False) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        labels = (np.arange(n) % 10).astype(np.uint8)
        blobs = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.tobytes(),
        }
        for name, blob in blobs.items():
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (raw / name).write_bytes(blob)
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_splits_range_and_labels(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz=gz)
    sizes = {}
    for split in ("train", "test", "all"):
        dm = _setup(MNISTDataModule(root=str(tmp_path), split=split, val_size=4, batch_size=4, download=False))
        sizes[split] = (len(dm.train_images), len(dm.val_images))
        assert dm.train_images.dtype == torch.uint8 and dm.train_images.shape[1:] == (1, 28, 28)
    assert sizes == {"train": (26, 4), "test": (16, 4), "all": (46, 4)}
    dm = _setup(MNISTDataModule(root=str(tmp_path), split="train", val_size=0, batch_size=30, download=False))
    images, labels = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert images.dtype == torch.float32 and images.min() == -1.0 and images.max() == 1.0
    assert sorted(labels.tolist()) == sorted(i % 10 for i in range(30))


def test_mnist_three_channels_and_resize(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    dm = _setup(MNISTDataModule(root=str(tmp_path), channels=3, image_size=16, val_size=0, download=False))
    assert dm.train_images.shape[1:] == (3, 16, 16)
    assert torch.equal(dm.train_images[:, 0], dm.train_images[:, 2])  # gray copied to R, G and B


def test_mnist_missing_files_name_folder_and_files(tmp_path: Path) -> None:
    dm = MNISTDataModule(root=str(tmp_path), download=False)
    dm.prepare_data()  # download=false: nothing fetched
    with pytest.raises(DatasetError, match=r"MNIST/raw.*train-images-idx3-ubyte.*dataset.download"):
        dm.setup("fit")


def test_mnist_failing_download_is_one_dataset_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self) -> None:
        raise URLError("no network")

    monkeypatch.setattr(MNIST, "download", offline)
    with pytest.raises(DatasetError, match=r"could not download mnist.*URLError.*IDX files.*MNIST/raw"):
        MNISTDataModule(root=str(tmp_path), download=True).prepare_data()


# -- CIFAR-10: pickled batches in cifar-10-batches-py ----------------------------------------------------------
def write_cifar10(root: Path, per_batch: int = 6, monkeypatch: pytest.MonkeyPatch | None = None) -> Path:
    """The real layout and pickle format; torchvision md5-checks every file, so the published checksums are
    swapped for the fakes' own (only the checksums: torchvision's real reading code then runs unchanged)."""
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    md5 = {}

    def dump(name: str, obj: dict) -> None:
        (folder / name).write_bytes(pickle.dumps(obj))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        dump(name, {"batch_label": name, "data": data, "labels": list(range(per_batch)), "filenames": []})
    dump("batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    if monkeypatch is not None:
        monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
        monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
        monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    return root


def test_cifar10_pickles_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path, monkeypatch=monkeypatch)
    sizes = {}
    for split in ("train", "test", "all"):
        dm = _setup(CIFAR10DataModule(root=str(tmp_path), split=split, val_size=2, download=False))
        sizes[split] = (len(dm.train_images), len(dm.val_images))
    assert sizes == {"train": (28, 2), "test": (4, 2), "all": (34, 2)}
    assert dm.flip and dm.train_images.shape[1:] == (3, 32, 32)
    # pixel layout: the first row of data_batch_1 is R plane, G plane, B plane of image 0
    first = pickle.loads((tmp_path / CIFAR10.base_folder / "data_batch_1").read_bytes())["data"][0]
    dm = _setup(CIFAR10DataModule(root=str(tmp_path), val_size=0, download=False))
    assert any(torch.equal(img.flatten(), torch.from_numpy(first)) for img in dm.train_images)
    gray = _setup(CIFAR10DataModule(root=str(tmp_path), channels=1, image_size=16, val_size=0, download=False))
    assert gray.train_images.shape == (30, 1, 16, 16)


def test_cifar10_missing_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py.*data_batch_1.*test_batch.*batches.meta.*download"):
        _setup(CIFAR10DataModule(root=str(tmp_path), download=False))
    write_cifar10(tmp_path)  # real checksums kept: the fakes fail torchvision's md5 check
    with pytest.raises(DatasetError, match="wrong md5"):
        _setup(CIFAR10DataModule(root=str(tmp_path), download=False))


# -- Stanford Cars: torchvision's layout (.mat annotations) and cars_train/ + cars_test/ folders ---------------------
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
        return _setup(StanfordCarsDataModule(root=str(root), val_size=0, cache_dir=str(cache), **kwargs))

    dm = cars(split="all", image_size=16)
    assert dm.train_images.shape == (14, 3, 16, 16) and dm.flip
    assert sorted(dm.train_labels.tolist()) == sorted([i % 3 for i in range(8)] + [i % 3 for i in range(6)])
    caches = sorted((cache / "decoded").glob("*.pt"))
    assert len(caches) == 2 and not list((cache / "decoded").glob("*.tmp"))
    again = cars(split="all", image_size=16)
    assert torch.equal(again.train_images, dm.train_images)  # read back from the cache
    # Another size, or a changed file, is a new cache entry, never a stale one.
    cars(split="train", image_size=8)
    _write_jpegs(root / "stanford_cars" / "cars_train", 1, start=7)  # rewrite 00007.jpg
    cars(split="train", image_size=16)
    assert len(list((cache / "decoded").glob("*.pt"))) == 4
    assert sorted(p for p in root.rglob("*")) == before  # nothing written into the dataset's folder


def test_stanford_cars_folder_layout(tmp_path: Path) -> None:
    _write_jpegs(tmp_path / "cars_train", 10)
    _write_jpegs(tmp_path / "cars_test", 4, start=50)
    dm = _setup(StanfordCarsDataModule(root=str(tmp_path), split="test", val_size=0, batch_size=2))
    assert dm.train_images.shape == (4, 3, 64, 64) and (dm.train_labels == -1).all()
    dm = _setup(StanfordCarsDataModule(root=str(tmp_path), split="all", image_size=16, val_size=0.25))
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
        dm = _setup(StanfordCarsDataModule(root=str(tmp_path), image_size=16, val_size=0, cache_min_files=None))
    assert len(dm.train_images) == 7 and "00003.jpg" in caplog.text
    with pytest.raises(DatasetError, match="00003.jpg"):
        _setup(StanfordCarsDataModule(root=str(tmp_path), image_size=16, on_error="raise", cache_min_files=None))
