"""``conditioning``: the class count and names come from the dataset; an unconditional config stays as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ddpm_lab.artifacts.trained_model import resolve_class
from ddpm_lab.config import stored_config
from ddpm_lab.config.build import label_dropout
from ddpm_lab.config.conditioning import condition_on_dataset
from ddpm_lab.data import CIFAR10DataModule, ImageFolderDataModule, MNISTDataModule
from ddpm_lab.errors import ConfigError, DatasetError
from helpers import TINY_TRAIN, write_image_folder


@pytest.fixture(scope="module")
def pets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("pets"), n_per_class=2, size=8, classes=("dog", "cat", "owl"))


def test_class_conditioning_fills_in_the_dataset_classes(cfg_train, pets: Path):
    cfg = cfg_train(*TINY_TRAIN, f"dataset.root={pets}", "conditioning=class", "conditioning.p_uncond=0.2")
    conditioning = condition_on_dataset(cfg)
    assert conditioning.class_names == ["cat", "dog", "owl"]  # sorted sub-folders, as the labels are
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
    for bad in ("eel", 3, -1, "3", True):
        with pytest.raises(ConfigError, match="is not one of the model's 3 classes"):
            resolve_class(bad, 3, ["cat", "dog", "owl"])
    with pytest.raises(ConfigError, match="needs a class-conditional model"):
        resolve_class(0, 0, None)
