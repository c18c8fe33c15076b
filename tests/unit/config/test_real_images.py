"""The real images ``evaluate`` compares with: the ``dataset=`` override or the training run's dataset (resolution
and channels always the checkpoint's), and where their features are cached."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ddpm_lab.config.real_images import compared_dataset, dataset_source, images_of, stats_folder
from ddpm_lab.errors import ConfigError

FOLDER = {"_target_": "ddpm_lab.data.ImageFolderDataModule", "image_size": 32, "channels": 3, "cache_dir": "/x"}


def test_an_override_follows_the_checkpoints_resolution_and_our_cache(tmp_path: Path, caplog):
    override = OmegaConf.create({**FOLDER, "root": str(tmp_path)})
    stored = {"dataset": {"image_size": 16, "channels": 1}}
    with caplog.at_level("INFO"):
        dataset = compared_dataset(override, "nowhere/last.ckpt", str(tmp_path / "cache"), stored)
    assert dataset["image_size"] == 16 and dataset["channels"] == 1 and dataset["cache_dir"] == str(tmp_path / "cache")
    assert "dataset.image_size=32 -> 16, as the checkpoint's model was trained" in caplog.text
    assert dataset_source(dataset) == f"ImageFolderDataModule at {tmp_path}"
    assert dataset_source({"_target_": "ddpm_lab.data.DigitsDataModule"}) == "DigitsDataModule"


def test_the_training_runs_dataset_is_read_from_its_config(tmp_path: Path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "paths:\n  data_dir: /data\ndataset:\n  _target_: ddpm_lab.data.ImageFolderDataModule\n"
        "  root: ${paths.data_dir}/pets\n  image_size: 16\n  channels: 3\n"
    )
    dataset = compared_dataset(None, str(run / "checkpoints" / "last.ckpt"), None, {})
    assert dataset["root"] == "/data/pets" and dataset["image_size"] == 16
    with pytest.raises(ConfigError, match="no dataset to compare with: .*does not exist and the checkpoint records"):
        compared_dataset(None, str(tmp_path / "lone" / "checkpoints" / "last.ckpt"), None, {})


def test_a_checkpoint_outside_its_run_uses_the_dataset_its_run_recorded(tmp_path: Path):
    """`ema out=DIR` or a copied checkpoint: no `.hydra/` two levels up, so the run config stored in the checkpoint
    says which images to compare with; the run folder's file still wins where it exists."""
    recorded = {**FOLDER, "root": "/data/digits", "cache_dir": "/the/runs/cache"}
    stored = {"dataset": {"image_size": 28, "channels": 1}, "run": {"config": {"dataset": recorded}}}
    lone = str(tmp_path / "elsewhere" / "ema_0.1_step_0001350.ckpt")
    dataset = compared_dataset(None, lone, str(tmp_path / "cache"), stored)
    assert dataset["root"] == "/data/digits" and dataset["cache_dir"] == str(tmp_path / "cache")
    assert (dataset["image_size"], dataset["channels"]) == (28, 1)  # the model's, as always
    for broken in ({"run": {"config": {"dataset": "x"}}}, {"run": {"config": []}}, {"run": 3}, {"run": {"config": {}}}):
        with pytest.raises(ConfigError, match="no dataset to compare with"):
            compared_dataset(None, lone, None, broken)
    with pytest.raises(ConfigError, match="no dataset to compare with"):  # never resolved here
        compared_dataset(None, lone, None, {"run": {"config": {"dataset": {**recorded, "root": "${oc.env:HOME}"}}}})
    with pytest.raises(Exception, match="dataset"):  # a target outside the allow-list is refused, not built
        compared_dataset(None, lone, None, {"run": {"config": {"dataset": {"_target_": "os.system"}}}})


def test_a_data_module_is_built_at_once_and_read_when_asked(tmp_path: Path):
    load = images_of({**FOLDER, "root": str(tmp_path / "missing"), "cache_dir": None})  # built: nothing read yet
    with pytest.raises(Exception, match="does not exist"):
        load()
    with pytest.raises(ConfigError, match="dataset.split must be one of"):
        images_of({**FOLDER, "root": str(tmp_path), "split": "val"})


def test_the_stats_folder_is_cache_dir_or_the_fid_stats_of_paths_cache_dir(tmp_path: Path):
    assert stats_folder(str(tmp_path / "mine"), "/ignored") == tmp_path / "mine"
    assert stats_folder(None, str(tmp_path)) == tmp_path / "fid_stats"
    (tmp_path / "a_file").write_text("x")
    for bad in ("", "  ", 3, str(tmp_path / "a_file")):
        with pytest.raises(ConfigError, match=r"^cache_dir must be a folder or null \(<paths.cache_dir>/fid_stats\)"):
            stats_folder(bad, None)
