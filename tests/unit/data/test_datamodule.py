"""Image folders, bad data, batches across devices, flips, and the dataset/model config link."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import get_class
from PIL import Image

from conftest import run_cli, write_image_folder
from ddpm_lab.data import DatasetError, ImageDataModule, ImageFolderDataModule, InMemoryLoader
from ddpm_lab.errors import ConfigError


def fake_trainer(world_size: int = 1, global_rank: int = 0, training: bool = True) -> SimpleNamespace:
    """What the data module reads from its trainer: devices, rank, training state, device."""
    return SimpleNamespace(
        world_size=world_size,
        global_rank=global_rank,
        training=training,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )


def folder_module(root: Path, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root=str(root), **{"image_size": 16, "val_size": 0, "batch_size": 4, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


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


def test_image_folder_cache_is_used_and_keyed(tmp_path: Path) -> None:
    root, cache = write_image_folder(tmp_path / "imgs", n_per_class=4), tmp_path / "cache"
    first = folder_module(root, cache_min_files=0, cache_dir=str(cache))
    assert len(list((cache / "decoded").glob("*.pt"))) == 1
    (root / "a" / "000.png").unlink()
    second = folder_module(root, cache_min_files=0, cache_dir=str(cache))
    assert len(second.train_images) == len(first.train_images) - 1
    assert len(list((cache / "decoded").glob("*.pt"))) == 2
    folder_module(root, cache_min_files=100, cache_dir=str(cache))  # below the threshold: no cache
    assert len(list((cache / "decoded").glob("*.pt"))) == 2
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # nothing of ours in the dataset folder


def test_empty_and_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"empty holds no images"):
        folder_module(tmp_path / "empty")
    with pytest.raises(DatasetError, match=r"nowhere does not exist"):
        ImageFolderDataModule(root=str(tmp_path / "nowhere")).prepare_data()


def write_bad_files(root: Path) -> None:
    png = (root / "a" / "001.png").read_bytes()
    (root / "a" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "b" / "text.jpg").write_text("this is not a JPEG")
    (root / "b" / "empty.png").write_bytes(b"")


def test_bad_files_skip_with_warning_or_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_image_folder(tmp_path / "imgs", n_per_class=6)
    write_bad_files(root)
    with caplog.at_level(logging.WARNING):
        dm = folder_module(root, on_error="skip")
    assert len(dm.train_images) == 12
    assert all(name in caplog.text for name in ("truncated.png", "text.jpg", "empty.png"))
    with pytest.raises(DatasetError, match=r"3 unreadable.*(truncated.png|text.jpg|empty.png).*on_error=skip"):
        folder_module(root, on_error="raise")
    with pytest.raises(ValueError, match="on_error"):
        ImageFolderDataModule(root=str(root), on_error="ignore")


def test_only_bad_files_stop_even_when_skipping(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="x.png"):
        folder_module(tmp_path, on_error="skip")


def test_global_batch_divided_over_two_devices(image_folder: Path) -> None:
    per_rank = []
    for rank in (0, 1):
        dm = ImageFolderDataModule(root=str(image_folder), image_size=8, val_size=8, batch_size=8)
        dm.trainer = fake_trainer(world_size=2, global_rank=rank)
        dm.setup("fit")
        train, val = dm.train_dataloader(), dm.val_dataloader()
        batches = list(train)
        assert all(images.shape[0] == 4 for images, _ in batches) and len(batches) == len(train) == 40 // 8
        per_rank.append(torch.cat([images for images, _ in batches]))
        assert sum(len(labels) for _, labels in val) == 4
    # the two ranks see disjoint images that together cover the epoch
    together = torch.cat(per_rank).flatten(1)
    assert len(torch.unique(together, dim=0)) == len(together) == 40
    dm = ImageFolderDataModule(root=str(image_folder), batch_size=7)
    dm.trainer = fake_trainer(world_size=2)
    with pytest.raises(ValueError, match="multiple of 2"):
        dm.per_device_batch_size()


def test_flip_only_while_training_and_range(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    ramp = torch.arange(16, dtype=torch.uint8).mul(17).repeat(16, 1)  # 0 .. 255 left to right
    Image.fromarray(ramp.numpy()).save(tmp_path / "a" / "ramp.png")
    dm = folder_module(tmp_path, channels=1, flip=True, batch_size=1)
    batch = (dm.train_images.expand(64, -1, -1, -1).clone(), torch.zeros(64, dtype=torch.long))
    dm.trainer = fake_trainer(training=False)
    plain, _ = dm.on_after_batch_transfer(batch, 0)
    assert plain.min() == -1 and plain.max() == 1 and (plain[:, 0, 0, 0] == -1).all()
    dm.trainer = fake_trainer(training=True)
    images, _ = dm.on_after_batch_transfer(batch, 0)
    flipped = images[:, 0, 0, 0] == 1
    assert 10 < flipped.sum() < 54  # about half; P(outside) < 1e-6
    assert torch.equal(images[flipped], plain[flipped].flip(-1)) and torch.equal(images[~flipped], plain[~flipped])


def test_on_device_and_loader_epochs(image_folder: Path) -> None:
    dm = ImageFolderDataModule(root=str(image_folder), image_size=8, val_size=0, batch_size=8, on_device=True)
    dm.trainer = fake_trainer()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, InMemoryLoader) and dm.train_images.device == dm.trainer.strategy.root_device
    assert len(loader) == 6
    epoch1, epoch2 = (torch.cat([images.flatten(1) for images, _ in loader]) for _ in range(2))
    assert not torch.equal(epoch1, epoch2)  # reshuffled every epoch ...
    assert torch.equal(epoch1.unique(dim=0), epoch2.unique(dim=0))  # ... over the same images


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "stanford_cars", "image_folder"])
def test_model_follows_dataset_config(dataset: str, cfg_train) -> None:
    cfg = cfg_train(f"dataset={dataset}", "dataset.root=/data", "dataset.image_size=24", "dataset.channels=1")
    assert (cfg.model.in_channels, cfg.model.image_size) == (1, 24)
    default = cfg_train(f"dataset={dataset}", "dataset.root=/data")
    assert (default.model.in_channels, default.model.image_size) == (
        default.dataset.channels,
        default.dataset.image_size,
    )
    assert default.dataset.flip == (dataset in ("cifar10", "stanford_cars"))
    assert issubclass(get_class(default.dataset._target_), ImageDataModule)


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


def test_seed_null_draws_a_seed_and_flags_are_booleans(image_folder: Path) -> None:
    """``seed: null`` (a nondeterministic run) still splits and shuffles; a flag that is not a bool names its key."""
    dm = ImageFolderDataModule(root=str(image_folder), image_size=16, channels=3, batch_size=4, val_size=4, seed=None)
    assert isinstance(dm.seed, int)
    dm.setup("fit")
    assert len(dm.val_images) == 4 and next(iter(dm.train_dataloader()))[0].shape[0] == 4
    with pytest.raises(ConfigError, match=r"^dataset\.flip must be true or false, got 'maybe'"):
        ImageFolderDataModule(root=str(image_folder), flip="maybe")
    with pytest.raises(ConfigError, match=r"^dataset\.seed must be an integer"):
        ImageFolderDataModule(root=str(image_folder), seed="abc")
