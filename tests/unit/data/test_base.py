"""What every dataset option shares (data/base.py): batches across devices, flips, on-device data, seeds and flags,
the unshuffled batches of debug=overfit, the dataset/model config link, and the split and class-name contract."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import get_class
from PIL import Image

from data_helpers import fake_trainer, folder_module
from ddpm_lab.data import (
    DatasetError,
    DigitsDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    InMemoryLoader,
    StanfordCarsDataModule,
)
from ddpm_lab.errors import ConfigError
from helpers import write_image_folder


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
    batch = (dm.train_images[:].expand(64, -1, -1, -1).clone(), torch.zeros(64, dtype=torch.long))
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


def test_overfit_batches_serves_the_same_batch_every_epoch() -> None:
    dm = DigitsDataModule(val_size=0, batch_size=8)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, overfit_batches=1, training=True)
    loader = dm.train_dataloader()
    assert torch.equal(next(iter(loader))[0], next(iter(loader))[0])  # two epochs, one batch
    dm.trainer.overfit_batches = 0
    loader = dm.train_dataloader()
    assert not torch.equal(next(iter(loader))[0], next(iter(loader))[0])  # normal runs reshuffle each epoch


def test_every_split_asks_for_its_halves_in_order() -> None:
    """The one split table: ``train`` and ``test`` one half each, ``all`` both, train first (what ``load`` sees)."""
    seen = []

    class Halves(ImageDataModule):
        def load(self, train: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
            seen.append(train)
            value = 0 if train else 255
            return torch.full((2, 1, 4, 4), value, dtype=torch.uint8), torch.full((2,), int(bool(train)))

    parts = {}
    for split in ("train", "test", "all"):
        seen.clear()
        images, labels = Halves(root="x", image_size=4, channels=1, split=split).load_split()
        parts[split] = (list(seen), images[:, 0, 0, 0].tolist(), labels.tolist())
    assert parts == {
        "train": ([True], [0, 0], [1, 1]),
        "test": ([False], [255, 255], [0, 0]),
        "all": ([True, False], [0, 0, 255, 255], [1, 1, 0, 0]),
    }
    with pytest.raises(ConfigError, match=r"dataset.split must be one of \('train', 'test', 'all'\)"):
        Halves(root="x", image_size=4, channels=1, split="val")


def test_class_names_come_from_every_half_of_the_split_and_a_missing_dataset_says_so(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "split" / "train", n_per_class=1, size=8, classes=("dog", "cat"))
    write_image_folder(tmp_path / "split" / "test", n_per_class=1, size=8, classes=("owl", "dog", "cat"))
    root = str(tmp_path / "split")
    names = {s: ImageFolderDataModule(root=root, split=s).class_names for s in ("train", "test", "all")}
    assert names == {"train": ["cat", "dog"], "test": ["cat", "dog", "owl"], "all": ["cat", "dog", "owl"]}
    flat = write_image_folder(tmp_path / "flat", n_per_class=1, size=8, classes=("b", "a"))
    assert ImageFolderDataModule(root=str(flat), split="test").class_names == ["a", "b"]  # no halves: the whole
    (tmp_path / "loose").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "loose" / "x.png")
    assert ImageFolderDataModule(root=str(tmp_path / "loose")).class_names is None  # unlabeled
    with pytest.raises(DatasetError, match="nowhere does not exist"):
        _ = ImageFolderDataModule(root=str(tmp_path / "nowhere")).class_names
    with pytest.raises(DatasetError, match="Stanford Cars not found"):
        _ = StanfordCarsDataModule(root=str(tmp_path / "nowhere")).class_names
    assert DigitsDataModule().class_names == [str(d) for d in range(10)]  # fixed names: nothing read


def write_named_classes(root: Path, classes: list[str]) -> None:
    """One 4×4 grey PNG per class whose level says the class: class ``classes[k]`` is level 20·(k + 1)."""
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4), 20 * (k + 1)).save(root / name / "0.png")


def labels_by_folder(dm: ImageDataModule, written: list[str]) -> dict[str, str]:
    """{folder an image came from: the class name its label stands for}, read back through ``load_split``."""
    images, labels = dm.load_split()
    folder = [written[int(level) // 20 - 1] for level in images[:, 0, 0, 0]]
    return {name: dm.class_names[int(label)] for name, label in zip(folder, labels)}


def test_numeric_class_folders_sort_naturally(tmp_path: Path) -> None:
    written = [str(k) for k in range(1, 11)]
    write_named_classes(tmp_path, written)
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=4, channels=1, cache_min_files=None)
    assert dm.class_names == written  # 1, 2, ..., 10: not 1, 10, 2
    assert labels_by_folder(dm, written) == {name: name for name in written}


def test_a_class_missing_from_one_half_shifts_no_label(tmp_path: Path) -> None:
    """split=all: labels come from the one mapping over both halves, not from each half's own folders."""
    written = ["a", "b", "c", "d"]
    write_named_classes(tmp_path / "test", written)
    write_named_classes(tmp_path / "train", written)
    for name in ("b",):  # train/ lacks class b
        for f in (tmp_path / "train" / name).iterdir():
            f.unlink()
        (tmp_path / "train" / name).rmdir()
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=4, channels=1, split="all", cache_min_files=None)
    assert dm.class_names == written
    images, labels = dm.load_split()
    assert len(labels) == 7
    assert labels_by_folder(dm, written) == {name: name for name in written}


def test_class_names_map_explicitly(tmp_path: Path) -> None:
    written = ["10", "2", "cat"]
    write_named_classes(tmp_path, written)
    order = ["cat", "10", "2"]
    kwargs = {"root": str(tmp_path), "image_size": 4, "channels": 1, "cache_min_files": None}
    dm = ImageFolderDataModule(class_names=order, **kwargs)
    assert dm.class_names == order
    assert labels_by_folder(dm, written) == {name: name for name in written}
    with pytest.raises(DatasetError, match="has a class '2' that it does not list"):
        _ = ImageFolderDataModule(class_names=["cat", "10"], **kwargs).class_names
    for bad, message in ((["a", "a"], "names 'a' twice"), ("cat", "must be a list"), ([], "at least one class")):
        with pytest.raises(ConfigError, match=message):
            ImageFolderDataModule(class_names=bad, **kwargs)
