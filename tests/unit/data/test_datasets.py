"""The dataset registry: ``ddpm_lab.data.DATASETS`` is what the allow-list lets configs name, and every dataset
is one module in data/datasets/ plus one config in configs/dataset/ that instantiates it."""

from __future__ import annotations

import pkgutil

import pytest
import yaml
from hydra.utils import get_class

import ddpm_lab.data.datasets
from ddpm_lab.artifacts.allow_list import DATASET_TARGETS
from ddpm_lab.data import DATASETS, ImageDataModule
from helpers import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "configs" / "dataset").glob("*.yaml"))


def test_the_registry_is_the_allow_list() -> None:
    assert set(DATASETS) == DATASET_TARGETS
    for target, cls in DATASETS.items():
        assert issubclass(cls, ImageDataModule) and get_class(target) is cls  # the name a config uses resolves


def test_one_module_and_one_config_per_dataset() -> None:
    modules = sorted(m.name for m in pkgutil.iter_modules(ddpm_lab.data.datasets.__path__))
    configs = {path.stem: yaml.safe_load(path.read_text())["_target_"] for path in CONFIGS}
    assert sorted(configs) == modules and sorted(configs.values()) == sorted(DATASETS)
    for name, target in configs.items():
        assert DATASETS[target].__module__ == f"ddpm_lab.data.datasets.{name}"


@pytest.mark.parametrize("target", sorted(DATASETS))
def test_each_dataset_names_itself_after_its_config(target: str) -> None:
    """``name`` is what messages and logs call the dataset: the config option a user typed."""
    cls = DATASETS[target]
    assert cls.name == cls.__module__.rpartition(".")[2]
