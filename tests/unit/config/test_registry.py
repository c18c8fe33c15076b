"""One registry: every ``_target_`` that a checkpoint stores or a run folder is read back for is one the readers
allow. Checked over the shipped configs here, and at launch for any config (``check_train_config``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.utils import get_object

from ddpm_lab.artifacts.allow_list import DATASET_TARGETS, SECTIONS, section_builders, target_name
from ddpm_lab.artifacts.trained_model import load_model
from ddpm_lab.config.checks import check_storable, check_train_config
from ddpm_lab.data import ImageFolderDataModule
from ddpm_lab.diffusion import SAMPLERS, DDIMSampler, DiffusersSampler
from ddpm_lab.errors import ConfigError
from ddpm_lab.models import MODELS, UNet
from helpers import REPO_ROOT, TINY_TRAIN, save_untrained

CONFIGS = REPO_ROOT / "configs"


def _targets(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    """(config key, target) of every node under ``node`` naming a ``_target_``; ``key`` is where ``node`` sits."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield key, node["_target_"]
        for name, child in node.items():
            if name != "defaults":
                yield from _targets(child, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _targets(child, f"{key}[{i}]")


def _allowed(key: str) -> set[str] | frozenset[str] | None:
    """What a target at config key ``key`` may name, when it ends up in a stored config or is read back from a run
    folder: a model section, the dataset, or a sampler (the run's, or one a callback carries). None: neither."""
    builders = section_builders()
    if key in builders:
        return set(builders[key])
    if key == "dataset":
        return DATASET_TARGETS
    if key.rsplit(".", 1)[-1] == "sampler":  # callbacks.<name>.sampler
        return set(builders["sampler"])
    return None


def stored_targets(root: Path) -> Iterator[tuple[str, str, Any]]:
    """(file, config key, target) of every target under ``root`` that a checkpoint stores or a run folder is read
    back for; a file's keys sit under its group (``sampler/ddim.yaml``: ``sampler``) unless it is ``_global_``."""
    for path in sorted(root.rglob("*.yaml")):
        text = path.read_text()
        relative = path.relative_to(root)
        package = "" if "# @package _global_" in text else ".".join(relative.parts[:-1])
        for key, target in _targets(yaml.safe_load(text) or {}, package):
            if _allowed(key) is not None:
                yield str(relative), key, target


def refused(root: Path) -> list[str]:
    return [
        f"{file}: {key}._target_={target!r}"
        for file, key, target in stored_targets(root)
        if not isinstance(target, str) or target not in _allowed(key)
    ]


def test_every_stored_target_of_the_shipped_configs_is_allowed():
    assert refused(CONFIGS) == []
    keys = [key for _, key, _ in stored_targets(CONFIGS)]
    # The walk reached every kind: each option of the model groups and datasets, and the callbacks' samplers.
    for group in (*SECTIONS, "dataset"):
        assert keys.count(group) == len(list((CONFIGS / group).glob("*.yaml"))), group
    assert {"callbacks.sample_grid.sampler", "callbacks.fid.sampler"} <= set(keys)


def test_the_walk_finds_a_config_whose_target_is_not_allowed(tmp_path: Path):
    root = shutil.copytree(CONFIGS, tmp_path / "configs")
    (root / "sampler" / "mine.yaml").write_text("_target_: mylab.samplers.MySampler\nsteps: 10\n")
    (root / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ncallbacks:\n  sample_grid:\n    sampler:\n      _target_: os.system\n"
    )
    assert refused(root) == [
        "experiment/mine.yaml: callbacks.sample_grid.sampler._target_='os.system'",
        "sampler/mine.yaml: sampler._target_='mylab.samplers.MySampler'",
    ]


def test_section_builders_come_from_the_registries_under_their_config_names():
    builders = section_builders()
    assert tuple(builders) == SECTIONS
    assert list(builders["sampler"].values()) == list(SAMPLERS.values()) and DiffusersSampler in SAMPLERS.values()
    assert list(builders["model"].values()) == list(MODELS.values())
    assert "ddpm_lab.diffusion.DDIMSampler" in builders["sampler"] and "ddpm_lab.models.UNet" in builders["model"]
    for section in builders.values():
        for name, builder in section.items():
            assert get_object(name) is builder  # the name a config uses builds exactly the registered builder


def test_a_target_name_is_the_subpackage_export_a_config_uses():
    """Datasets are defined in ddpm_lab/data/datasets/<name>.py and named ``ddpm_lab.data.<Class>``."""
    for name in DATASET_TARGETS:
        assert target_name(get_object(name)) == name
    assert target_name(UnregisteredSampler) == f"{__name__}.UnregisteredSampler"  # not exported anywhere else


class UnregisteredSampler(DDIMSampler):
    """A sampler a config can build, but one SAMPLERS does not list."""


class UnregisteredNet(UNet):
    """A network a config can build, but one MODELS does not list."""


class UnregisteredFolder(ImageFolderDataModule):
    """A dataset a config can build, but one DATASET_TARGETS does not list."""


@pytest.fixture
def launch(cfg_train, image_folder: Path, tmp_path: Path):
    return lambda *overrides: cfg_train(
        *TINY_TRAIN, f"dataset.root={image_folder}", f"paths.output_root={tmp_path / 'out'}", *overrides
    )


@pytest.mark.parametrize(
    "key, cls, registry",
    [
        ("sampler", UnregisteredSampler, "SAMPLERS in ddpm_lab/diffusion/samplers.py"),
        ("model", UnregisteredNet, "MODELS in ddpm_lab/models/__init__.py"),
        ("dataset", UnregisteredFolder, "DATASET_TARGETS in ddpm_lab/artifacts/allow_list.py"),
    ],
)
def test_launch_refuses_a_target_its_checkpoints_could_not_name(key, cls, registry, launch):
    """The config builds (Hydra imports the class), but sample and evaluate would refuse every checkpoint: one line
    naming the key and where to register it, before any work."""
    target = f"{__name__}.{cls.__name__}"
    with pytest.raises(ConfigError) as refusal:
        check_train_config(launch("sampler=ddim", f"{key}._target_={target}"))
    message = str(refusal.value)
    assert message.startswith(f"{key}._target_={target} is not registered, so sample and evaluate would refuse")
    assert registry in message and "\n" not in message


def test_a_sampler_registered_in_samplers_is_accepted_at_launch_and_read_back(launch, monkeypatch, tmp_path: Path):
    monkeypatch.setitem(SAMPLERS, "unregistered", UnregisteredSampler)
    cfg = launch("sampler=ddim", f"sampler._target_={__name__}.UnregisteredSampler")
    check_train_config(cfg)
    loaded = load_model(save_untrained(tmp_path / "model.ckpt", cfg))
    assert type(loaded.sampler) is UnregisteredSampler


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_experiment_stores_a_config_its_readers_accept(experiment: str, cfg_train):
    check_storable(cfg_train(f"experiment={experiment}"))
