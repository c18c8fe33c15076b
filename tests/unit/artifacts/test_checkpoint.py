"""The checkpoint format: checkpoints written before the restructuring still load, the newest checkpoint is
found by its step, and a stored config cannot make us build more than its weights justify."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

import ddpm_lab
from ddpm_lab.artifacts.allow_list import safe_targets
from ddpm_lab.artifacts.checkpoint import (
    CHECKPOINT_FORMAT,
    LEGACY_TARGETS,
    MIGRATIONS,
    checkpoint_step,
    is_training_checkpoint,
    make_stored_config,
    newest_checkpoint,
    read_checkpoint,
    weights_checkpoint,
)
from ddpm_lab.artifacts.trained_model import load_model
from ddpm_lab.errors import CheckpointError, NewerCheckpointError
from ddpm_lab.models import UNet
from helpers import FIXTURES

LEGACY = FIXTURES / "legacy_run" / "checkpoints" / "last.ckpt"


def test_legacy_checkpoint_names_the_old_flat_modules():
    """The fixture really is an old file: format 1, its stored targets the 0.1 names, which no longer exist."""
    entry = torch.load(LEGACY, weights_only=True)["ddpm_lab"]
    assert entry["format"] == 1
    assert entry["config"]["model"]["_target_"] == "ddpm_lab.unet.UNet"
    assert entry["config"]["sampler"]["_target_"] == "ddpm_lab.samplers.DDIMSampler"
    with pytest.raises(ImportError):
        __import__("ddpm_lab.unet")


def test_a_format_1_checkpoint_is_read_in_todays_format_with_todays_names():
    raw = torch.load(LEGACY, weights_only=True)["ddpm_lab"]["config"]
    entry = read_checkpoint(LEGACY)["ddpm_lab"]
    assert entry["format"] == CHECKPOINT_FORMAT == 2
    config = entry["config"]
    assert {key: config[key]["_target_"] for key in ("model", "schedule", "diffusion", "sampler")} == {
        "model": "ddpm_lab.models.UNet",
        "schedule": "ddpm_lab.diffusion.make_betas",
        "diffusion": "ddpm_lab.diffusion.GaussianDiffusion",
        "sampler": "ddpm_lab.diffusion.DDIMSampler",
    }
    # only the names changed
    assert {k: v for k, v in config["model"].items() if k != "_target_"} == {
        k: v for k, v in raw["model"].items() if k != "_target_"
    }
    assert config["dataset"] == raw["dataset"]
    assert read_checkpoint(LEGACY, mmap=True)["ddpm_lab"] == entry  # the cheap look migrates the same way


def test_every_older_format_has_its_migration_step():
    assert set(MIGRATIONS) == set(range(1, CHECKPOINT_FORMAT))


def test_legacy_checkpoint_gives_the_same_network_and_samples():
    expected = torch.load(FIXTURES / "legacy_run" / "expected.pt", weights_only=True)
    net, diffusion, sampler = ddpm_lab.load_model(LEGACY)
    assert repr(sampler) == expected["sampler"]
    # Recorded on one machine: float32 sums differ with the CPU's kernels and thread count, by ~1e-8 here (this
    # net's float32 output is 2e-9 from its float64 one; 5 DDIM steps of values in [-1, 1] stay ~1e-8). The
    # tolerances are 100x that on any CPU, far below what a wrong weight or layer changes (~1e-3).
    with torch.no_grad():
        torch.testing.assert_close(net(expected["x"], expected["t"]), expected["out"], rtol=1e-5, atol=1e-6)
    # samples_seed1 was drawn again in issue 24, when DDIM's ε̂ began to follow its clipped x̂_0 (7e-4 away)
    x = diffusion.sample(net, shape=(3, 1, 8, 8), sampler=sampler, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x, expected["samples_seed1"], rtol=1e-5, atol=1e-5)


def test_every_legacy_name_maps_to_an_allowed_builder_and_is_no_longer_allowed_itself():
    """After reading, checkpoints name today's targets: the allow-list needs no old name."""
    allowed = safe_targets()
    for old, new in LEGACY_TARGETS.items():
        assert new in allowed and old not in allowed


def _with_format(path: Path, number) -> Path:
    ckpt = torch.load(LEGACY, weights_only=True)
    ckpt["ddpm_lab"]["format"] = number
    torch.save(ckpt, path)
    return path


def test_a_checkpoint_of_a_newer_format_is_refused_in_one_line_by_every_reader(tmp_path: Path):
    (tmp_path / "checkpoints").mkdir()
    newer = _with_format(tmp_path / "checkpoints" / "last.ckpt", 3)
    shutil.copy(LEGACY, tmp_path / "checkpoints" / "step_0000001.ckpt")  # an older, readable one beside it
    newer_ddpm_lab = r" was written by a newer ddpm_lab \(checkpoint format 3; this version reads up to 2\): upgrade"
    message = re.escape(str(newer)) + newer_ddpm_lab
    readers = {
        "read_checkpoint": lambda: read_checkpoint(newer),
        "mmap": lambda: read_checkpoint(newer, mmap=True),
        "load_model": lambda: load_model(newer),
        "checkpoint_step": lambda: checkpoint_step(newer),
        "newest_checkpoint": lambda: newest_checkpoint(newer.parent),  # not skipped: resuming would replace it
    }
    for name, read in readers.items():
        with pytest.raises(NewerCheckpointError, match=message) as refused:
            read()
        assert "\n" not in str(refused.value), name


@pytest.mark.parametrize("number", [None, "2", 2.0, True, 0, -1, [2]], ids=repr)
def test_a_missing_or_non_integer_format_is_refused_as_damaged(number, tmp_path: Path):
    path = _with_format(tmp_path / "odd.ckpt", number)
    if number is None:
        ckpt = torch.load(path, weights_only=True)
        del ckpt["ddpm_lab"]["format"]
        torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"odd.ckpt has no valid checkpoint format number .*damaged") as refused:
        load_model(path)
    assert not isinstance(refused.value, NewerCheckpointError)


def test_a_weights_checkpoint_round_trips_through_load_model(tmp_path: Path):
    legacy = read_checkpoint(LEGACY)["ddpm_lab"]["config"]
    config = make_stored_config(
        {key: legacy[key] for key in ("model", "schedule", "diffusion", "sampler")},
        dataset_name=None,
        image_size=8,
        channels=1,
        run_config={"converted_from": "somewhere"},
    )
    torch.manual_seed(0)
    net = UNet(**{k: v for k, v in config["model"].items() if k != "_target_"})
    ckpt = weights_checkpoint(config, net.state_dict())
    assert not is_training_checkpoint(ckpt) and ckpt["ddpm_lab"]["format"] == CHECKPOINT_FORMAT
    torch.save(ckpt, tmp_path / "weights.ckpt")
    loaded = load_model(tmp_path / "weights.ckpt")
    assert loaded.config == config and loaded.global_step == 0
    assert all(torch.equal(loaded.net.state_dict()[k], v) for k, v in net.state_dict().items())
    assert repr(loaded.sampler) == repr(load_model(LEGACY).sampler)


def test_a_training_checkpoint_holds_optimizer_and_loop_state():
    assert is_training_checkpoint(read_checkpoint(LEGACY))


def test_loaded_model_unpacks_and_says_where_it_came_from():
    loaded = load_model(LEGACY, weights="raw")
    net, diffusion, sampler = loaded
    assert net is loaded.net and loaded.global_step == 2 and loaded.path == LEGACY
    assert not net.training


def _step_checkpoint(path: Path, step: int, age_s: float) -> Path:
    torch.save({"global_step": step, "state_dict": {}, "ddpm_lab": {"format": CHECKPOINT_FORMAT, "config": {}}}, path)
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
