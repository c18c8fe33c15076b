"""The checkpoint format: checkpoints written before the restructuring still load, the newest checkpoint is
found by its step, and a stored config cannot make us build more than its weights justify."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch

import ddpm_lab
from conftest import FIXTURES
from ddpm_lab.artifacts.allow_list import LEGACY_TARGETS, SAFE_TARGETS, canonical_target
from ddpm_lab.artifacts.checkpoint import checkpoint_step, load_model, newest_checkpoint, read_checkpoint
from ddpm_lab.errors import CheckpointError

LEGACY = FIXTURES / "legacy_run" / "checkpoints" / "last.ckpt"


def test_legacy_checkpoint_names_the_old_flat_modules():
    """The fixture really is an old file: its stored targets are the 0.1 names, which no longer exist."""
    config = read_checkpoint(LEGACY)["ddpm_lab"]["config"]
    assert config["model"]["_target_"] == "ddpm_lab.unet.UNet"
    assert config["sampler"]["_target_"] == "ddpm_lab.samplers.DDIMSampler"
    with pytest.raises(ImportError):
        __import__("ddpm_lab.unet")


def test_legacy_checkpoint_gives_the_same_network_and_samples():
    expected = torch.load(FIXTURES / "legacy_run" / "expected.pt", weights_only=True)
    net, diffusion, sampler = ddpm_lab.load_model(LEGACY)
    assert repr(sampler) == expected["sampler"]
    # Float sums depend on the thread count (the expectations were made with 2): equal to rounding, not bit for bit.
    with torch.no_grad():
        torch.testing.assert_close(net(expected["x"], expected["t"]), expected["out"], rtol=1e-5, atol=1e-6)
    x = diffusion.sample(net, shape=(3, 1, 8, 8), sampler=sampler, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x, expected["samples_seed1"], rtol=1e-5, atol=1e-5)


def test_every_legacy_name_maps_to_an_allowed_builder():
    for old, new in LEGACY_TARGETS.items():
        assert canonical_target(old) == new and new in SAFE_TARGETS


def test_loaded_model_unpacks_and_says_where_it_came_from():
    loaded = load_model(LEGACY, weights="raw")
    net, diffusion, sampler = loaded
    assert net is loaded.net and loaded.global_step == 2 and loaded.path == LEGACY
    assert not net.training


def _step_checkpoint(path: Path, step: int, age_s: float) -> Path:
    torch.save({"global_step": step, "state_dict": {}, "ddpm_lab": {"config": {}}}, path)
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_newest_checkpoint_is_chosen_by_step_not_by_file_time(tmp_path: Path):
    """A copied or touched folder has new file times: the step inside each file decides."""
    _step_checkpoint(tmp_path / "step_0000200.ckpt", 200, age_s=1000)  # the newest by step, oldest on disk
    _step_checkpoint(tmp_path / "step_0000100.ckpt", 100, age_s=10)
    _step_checkpoint(tmp_path / "last.ckpt", 150, age_s=0)
    assert newest_checkpoint(tmp_path) == tmp_path / "step_0000200.ckpt"
    _step_checkpoint(tmp_path / "last.ckpt", 200, age_s=0)  # a tie goes to last.ckpt
    assert newest_checkpoint(tmp_path) == tmp_path / "last.ckpt"
    assert checkpoint_step(tmp_path / "step_0000100.ckpt") == 100


def test_no_checkpoint_at_all_is_one_clear_error(tmp_path: Path):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        newest_checkpoint(tmp_path)


def test_a_small_file_cannot_make_us_build_a_huge_model(tmp_path: Path):
    """The stored config asks for a network ~10^4 times larger than the tensors in the file: refused before
    anything is allocated (the network is sized on the meta device)."""
    ckpt = read_checkpoint(LEGACY)
    ckpt["ddpm_lab"]["config"]["model"]["base_channels"] = 4096
    ckpt["ddpm_lab"]["config"]["model"]["channel_mults"] = [1, 2, 4]
    path = tmp_path / "huge.ckpt"
    torch.save(ckpt, path)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="do not fit the model its config builds"):
        load_model(path)
    assert time.perf_counter() - start < 10


def test_a_copy_of_the_legacy_run_keeps_its_hydra_record(tmp_path: Path):
    run = shutil.copytree(FIXTURES / "legacy_run", tmp_path / "run")
    assert (run / ".hydra" / "overrides.yaml").is_file() and (run / ".hydra" / "config.yaml").is_file()
    assert newest_checkpoint(run / "checkpoints").name == "last.ckpt"
