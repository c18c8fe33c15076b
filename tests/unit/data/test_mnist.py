"""dataset=mnist (data/datasets/mnist.py) on fake data in the real IDX format, raw or gzipped."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torchvision.datasets import MNIST

from data_helpers import ready
from ddpm_lab.data import DatasetError, MNISTDataModule
from helpers import run_cli


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
        dm = ready(MNISTDataModule(root=str(tmp_path), split=split, val_size=4, batch_size=4, download=False))
        sizes[split] = (len(dm.train_images), len(dm.val_images))
        assert dm.train_images.dtype == torch.uint8 and dm.train_images.shape[1:] == (1, 28, 28)
    assert sizes == {"train": (26, 4), "test": (16, 4), "all": (46, 4)}
    dm = ready(MNISTDataModule(root=str(tmp_path), split="train", val_size=0, batch_size=30, download=False))
    images, labels = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert images.dtype == torch.float32 and images.min() == -1.0 and images.max() == 1.0
    assert sorted(labels.tolist()) == sorted(i % 10 for i in range(30))


def test_mnist_three_channels_and_resize(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    dm = ready(MNISTDataModule(root=str(tmp_path), channels=3, image_size=16, val_size=0, download=False))
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


def test_train_stops_before_training_when_data_is_missing(tmp_path: Path) -> None:
    proc = run_cli(
        "ddpm_lab.train",
        "debug=default",
        "trainer=cpu",
        "dataset=mnist",
        f"dataset.root={tmp_path / 'none'}",
        "dataset.download=false",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "train-images-idx3-ubyte" in error_lines[0] and "Traceback" not in proc.stderr
    assert not list((tmp_path / "run").rglob("*.ckpt"))
