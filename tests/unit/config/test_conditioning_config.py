"""``conditioning``: the class count and names come from the dataset; an unconditional config stays as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from ddpm_lab.artifacts.checkpoint import CHECKPOINT_KEY
from ddpm_lab.artifacts.classes import resolve_class
from ddpm_lab.config import stored_config
from ddpm_lab.config.build import label_dropout
from ddpm_lab.config.conditioning import condition_on_dataset, keep_checkpoint_classes
from ddpm_lab.data import CIFAR10DataModule, ImageFolderDataModule, MNISTDataModule
from ddpm_lab.errors import ConfigError, DatasetError, ResumeError
from helpers import TINY_TRAIN, conditional_checkpoint, write_image_folder


@pytest.fixture(scope="module")
def pets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("pets"), n_per_class=2, size=8, classes=("dog", "cat", "owl"))


def test_class_conditioning_fills_in_the_dataset_classes(cfg_train, pets: Path):
    cfg = cfg_train(*TINY_TRAIN, f"dataset.root={pets}", "conditioning=class", "conditioning.p_uncond=0.2")
    conditioning = condition_on_dataset(cfg)
    assert conditioning.class_names == ["cat", "dog", "owl"]  # sub-folders in natural order, as the labels are
    assert cfg.model.num_classes == 3
    stored = stored_config(cfg)
    assert stored["model"]["num_classes"] == 3 and stored["dataset"]["class_names"] == ["cat", "dog", "owl"]
    assert label_dropout(cfg) == 0.2


def test_an_unconditional_config_is_left_as_it_is(cfg_train, pets: Path):
    cfg = cfg_train(*TINY_TRAIN, f"dataset.root={pets}")
    before = OmegaConf.to_container(cfg)
    assert not condition_on_dataset(cfg).conditional
    assert OmegaConf.to_container(cfg) == before
    assert "num_classes" not in stored_config(cfg)["model"] and "class_names" not in stored_config(cfg)["dataset"]
    assert label_dropout(cfg) == 0.0


def test_class_counts_typed_by_hand_are_refused(cfg_train, pets: Path):
    cfg = cfg_train(*TINY_TRAIN, f"dataset.root={pets}", "conditioning=class", "+model.num_classes=5")
    with pytest.raises(ConfigError, match="model.num_classes=5 but the dataset has 3 classes"):
        condition_on_dataset(cfg)


def test_a_folder_without_class_folders_has_no_labels(cfg_train, tmp_path: Path):
    write_image_folder(tmp_path / "flat", n_per_class=2, size=8, classes=("x",))
    for f in (tmp_path / "flat" / "x").iterdir():
        f.rename(tmp_path / "flat" / f.name)
    (tmp_path / "flat" / "x").rmdir()
    cfg = cfg_train(*TINY_TRAIN, f"dataset.root={tmp_path / 'flat'}", "conditioning=class")
    with pytest.raises(DatasetError, match="conditioning=class needs class labels"):
        condition_on_dataset(cfg)


def test_data_modules_name_their_classes(tmp_path: Path):
    """Without decoding an image: MNIST and CIFAR-10 by heart, split image folders by ``train/``'s sub-folders."""
    for split in ("train", "test"):
        write_image_folder(tmp_path / split, n_per_class=1, size=8, classes=("b", "a"))
    assert ImageFolderDataModule(root=str(tmp_path), image_size=8).class_names == ["a", "b"]
    assert MNISTDataModule(root=str(tmp_path)).class_names == [str(d) for d in range(10)]
    names = CIFAR10DataModule(root=str(tmp_path)).class_names
    assert names[:3] == ["airplane", "automobile", "bird"] and len(names) == 10


@pytest.mark.parametrize("value,expected", [(1, 1), ("1", 1), ("cat", 0), ("owl", 2), ("2", 2)])
def test_a_class_is_named_by_index_or_name(value, expected):
    assert resolve_class(value, 3, ["cat", "dog", "owl"]) == expected


def test_names_win_over_indices_and_unknown_classes_are_refused():
    assert resolve_class("1", 3, ["2", "0", "1"]) == 2  # MNIST-like names that look like indices: the name wins
    assert resolve_class(1, 3, ["2", "0", "1"]) == 2  # class=1 reaches us as an int: still the name
    for bad in ("eel", 3, -1, "3", True):
        with pytest.raises(ConfigError, match="is not one of the model's 3 classes"):
            resolve_class(bad, 3, ["cat", "dog", "owl"])
    with pytest.raises(ConfigError, match="needs a class-conditional model"):
        resolve_class(0, 0, None)


def test_numbers_are_names_when_every_class_is_named_by_a_number():
    """Folders 1 … 10 (old checkpoints stored them string-sorted: 1, 10, 2, …): class=1 is the class named 1."""
    old = ["1", "10", "2", "3", "4", "5", "6", "7", "8", "9"]
    new = [str(k) for k in range(1, 11)]
    assert [resolve_class(k, 10, old) for k in (1, 10, 2)] == [0, 1, 2]
    assert [resolve_class(k, 10, new) for k in (1, 10, "2")] == [0, 9, 1]
    assert resolve_class(3, 3, ["01", "02", "03"]) == 2  # class=3 for a folder named 03
    for bad in (0, 11, "x"):
        with pytest.raises(ConfigError, match="which are named by numbers"):
            resolve_class(bad, 10, new)
    assert resolve_class(1, 3, ["cat", "7", "owl"]) == 1  # mixed names: a number that names no class is an index


def numbered_run(tmp_path: Path, cfg_train, *overrides: str):
    root = write_image_folder(tmp_path / "digits", n_per_class=1, size=8, classes=("1", "2", "10"))
    cfg = cfg_train(*TINY_TRAIN, f"dataset.root={root}", "conditioning=class", *overrides)
    condition_on_dataset(cfg)
    return cfg


def old_checkpoint(tmp_path: Path, cfg_train, names: list[str]) -> Path:
    """A checkpoint of the classes ``names``, stored in that order (string-sorted, as before natural order)."""
    path = conditional_checkpoint(tmp_path / "model.ckpt", [*TINY_TRAIN, f"dataset.root={tmp_path / 'digits'}"])
    ckpt = torch.load(path, weights_only=True)
    ckpt[CHECKPOINT_KEY]["config"]["dataset"]["class_names"] = names
    torch.save(ckpt, path)
    return path


def test_a_continued_run_keeps_the_labels_its_checkpoint_learned(cfg_train, tmp_path: Path):
    cfg = numbered_run(tmp_path, cfg_train)
    assert list(cfg.conditioning.class_names) == ["1", "2", "10"]  # a new run: natural order
    ckpt = old_checkpoint(tmp_path, cfg_train, ["1", "10", "2"])
    keep_checkpoint_classes(cfg, ckpt)
    assert list(cfg.dataset.class_names) == list(cfg.conditioning.class_names) == ["1", "10", "2"]
    dm = ImageFolderDataModule(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    _, labels = dm.load_split()
    assert labels.tolist() == [0, 1, 2]  # files 1/, 10/, 2/ (path order): label 1 is still "10" (new runs: 2)
    assert stored_config(cfg)["dataset"]["class_names"] == ["1", "10", "2"]


def test_resuming_onto_other_classes_is_refused(cfg_train, tmp_path: Path):
    cfg = numbered_run(tmp_path, cfg_train)
    ckpt = old_checkpoint(tmp_path, cfg_train, ["1", "2", "3"])
    keep_checkpoint_classes(cfg, ckpt)  # ckpt_path=: fine-tuning onto other classes is allowed (a warning)
    assert "class_names" not in cfg.dataset or cfg.dataset.class_names is None
    with open_dict(cfg):
        cfg.resume = str(tmp_path / "run")
    with pytest.raises(ResumeError, match="trained on the classes 1, 2, 3, but the dataset now has 1, 2, 10"):
        keep_checkpoint_classes(cfg, ckpt)
