"""dataset=cifar10 (data/datasets/cifar10.py) on fake data in the real pickle format, through torchvision."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10

from data_helpers import ready
from ddpm_lab.data import CIFAR10DataModule, DatasetError


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
        dm = ready(CIFAR10DataModule(root=str(tmp_path), split=split, val_size=2, download=False))
        sizes[split] = (len(dm.train_images), len(dm.val_images))
    assert sizes == {"train": (28, 2), "test": (4, 2), "all": (34, 2)}
    assert dm.flip and dm.train_images.shape[1:] == (3, 32, 32)
    # pixel layout: the first row of data_batch_1 is R plane, G plane, B plane of image 0
    first = pickle.loads((tmp_path / CIFAR10.base_folder / "data_batch_1").read_bytes())["data"][0]
    dm = ready(CIFAR10DataModule(root=str(tmp_path), val_size=0, download=False))
    assert any(torch.equal(img.flatten(), torch.from_numpy(first)) for img in dm.train_images)
    gray = ready(CIFAR10DataModule(root=str(tmp_path), channels=1, image_size=16, val_size=0, download=False))
    assert gray.train_images.shape == (30, 1, 16, 16)


def test_cifar10_missing_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py.*data_batch_1.*test_batch.*batches.meta.*download"):
        ready(CIFAR10DataModule(root=str(tmp_path), download=False))
    write_cifar10(tmp_path)  # real checksums kept: the fakes fail torchvision's md5 check
    with pytest.raises(DatasetError, match="wrong md5"):
        ready(CIFAR10DataModule(root=str(tmp_path), download=False))
