"""A diffusers folder is untrusted: every config field is type- and range-checked, and the weights' sizes come from
the file system and their headers before anything reads them (``ddpm_lab.artifacts.diffusers_checks``)."""

from __future__ import annotations

import json
import resource
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddpm_lab.artifacts.diffusers_checks import (
    FORMAT_OVERHEAD,
    check_scheduler_config,
    check_unet_config,
    check_weight_files,
    read_json,
)
from ddpm_lab.errors import CheckpointError, ConfigError

WHERE = Path("unet/config.json")
GOOD_UNET = {
    "_class_name": "UNet2DModel",
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "norm_eps": 1e-5,
    "dropout": 0.0,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "attention_head_dim": 8,
}
GOOD_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}


def test_the_published_layouts_pass():
    check_unet_config(GOOD_UNET, WHERE)
    check_unet_config({**GOOD_UNET, "sample_size": [8, 8], "num_class_embeds": 11, "layers_per_block": 2.0}, WHERE)
    check_unet_config({"sample_size": 32}, WHERE)  # diffusers' defaults for the rest (Ho et al.'s CIFAR-10 widths)
    check_unet_config({"_class_name": "UNet2DConditionModel", "sample_size": "x"}, WHERE)  # refused by its class
    check_scheduler_config(GOOD_SCHEDULER, WHERE)
    check_scheduler_config({"beta_schedule": "squaredcos_cap_v2", "clip_sample": False}, WHERE)


@pytest.mark.parametrize(
    ("field", "value", "culprit"),
    [
        ("sample_size", 0, "sample_size=0 must be an integer in [1, 4096]"),
        ("sample_size", 16.5, "sample_size=16.5 must be an integer"),
        ("sample_size", "32", "sample_size='32' must be an integer"),
        ("sample_size", 10**9, "sample_size=1000000000 must be an integer in [1, 4096]"),
        ("sample_size", 9, "sample_size=9 cannot be halved 1 times"),
        ("block_out_channels", [0, 16], "block_out_channels=[0, 16] must be a list of 1 to 8 integers"),
        ("block_out_channels", [8.5, 16], "block_out_channels=[8.5, 16] must be a list"),
        ("block_out_channels", [8, 10**7], "in [1, 8192]"),
        ("block_out_channels", 8, "block_out_channels=8 must be a list"),
        ("down_block_types", ["DownBlock2D"], "down_block_types names 1 blocks, but block_out_channels has 2"),
        ("up_block_types", "UpBlock2D", "up_block_types='UpBlock2D' must be a list of block names"),
        ("in_channels", 0, "in_channels=0 must be an integer in [1, 64]"),
        ("out_channels", "3", "out_channels='3' must be an integer"),
        ("layers_per_block", 0, "layers_per_block=0 must be an integer in [1, 16]"),
        ("norm_num_groups", 3, "norm_num_groups=3 does not divide every width"),
        ("norm_num_groups", 0, "norm_num_groups=0 must be an integer"),
        ("attention_head_dim", 0, "attention_head_dim=0 must be an integer"),
        ("num_class_embeds", 0, "num_class_embeds=0 must be an integer in [1, 100001]"),
        ("num_class_embeds", 10.5, "num_class_embeds=10.5 must be an integer"),
        ("dropout", 1, "dropout=1 must be below 1"),
        ("dropout", "none", "dropout='none' must be a number"),
        ("norm_eps", 0, "norm_eps=0 must be a number in (0, 1]"),
        ("norm_eps", float("nan"), "norm_eps=nan must be a number"),
        ("downsample_padding", 2, "downsample_padding=2 must be an integer in [0, 1]"),
        ("flip_sin_to_cos", "yes", "flip_sin_to_cos='yes' must be true or false"),
        ("_class_name", ["UNet2DModel"], "_class_name=['UNet2DModel'] must be a name"),
    ],
)
def test_a_unet_config_field_of_the_wrong_type_or_range_is_refused(field: str, value, culprit: str):
    with pytest.raises(ConfigError) as refused:
        check_unet_config({**GOOD_UNET, field: value}, WHERE)
    assert str(refused.value).startswith(f"{WHERE}: ") and culprit in str(refused.value)


@pytest.mark.parametrize(
    ("field", "value", "culprit"),
    [
        ("num_train_timesteps", "1000", "num_train_timesteps='1000' must be an integer in [1, 100000]"),
        ("num_train_timesteps", 0, "num_train_timesteps=0 must be an integer"),
        ("num_train_timesteps", 10**9, "num_train_timesteps=1000000000 must be an integer"),
        ("beta_start", 0, "beta_start=0 must be a number in (0, 1]"),
        ("beta_end", 2, "beta_end=2 must be a number in (0, 1]"),
        ("beta_start", 0.5, "beta_start=0.5 must be below beta_end=0.02"),
        ("clip_sample", "yes", "clip_sample='yes' must be true or false"),
        ("clip_sample_range", -1, "clip_sample_range=-1 must be a number"),
        ("prediction_type", 3, "prediction_type=3 must be a name"),
        ("steps_offset", -1, "steps_offset=-1 must be an integer"),
        ("trained_betas", "0.1", "trained_betas='0.1' must be a list or null"),
    ],
)
def test_a_scheduler_config_field_of_the_wrong_type_or_range_is_refused(field: str, value, culprit: str):
    with pytest.raises(ConfigError, match="^scheduler") as refused:
        check_scheduler_config({**GOOD_SCHEDULER, field: value}, Path("scheduler/scheduler_config.json"))
    assert culprit in str(refused.value)


def test_a_huge_or_deeply_nested_json_file_is_refused_before_it_is_read(tmp_path: Path):
    huge = tmp_path / "config.json"
    with open(huge, "wb") as f:
        f.truncate(8 << 30)  # sparse: 8 GB that take no disk, and no memory unless read
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="is 8589.9 MB, over the 1.0 MB a diffusers config can be"):
        read_json(huge)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: never read whole
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="cannot read .*nested.json"):
        read_json(nested)
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(CheckpointError, match="is not a JSON object"):
        read_json(tmp_path / "list.json")


PARAMETERS = 10_000  # the network the config builds: weights over 80 kB + FORMAT_OVERHEAD cannot be its


def test_weights_larger_than_the_config_can_hold_are_refused_by_their_size_alone(tmp_path: Path):
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    with open(weights, "wb") as f:
        f.truncate(4 << 30)  # a huge zero-filled (sparse) file
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=r"are 4295.0 MB, more than a U-Net of 10,000 parameters"):
        check_weight_files(tmp_path, PARAMETERS)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


def test_weights_headers_are_checked_before_diffusers_reads_them(tmp_path: Path):
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({"w": torch.zeros(100)}, weights)
    check_weight_files(tmp_path, PARAMETERS)  # the control: a real file of the right size passes
    weights.write_bytes(bytes(1000))  # zero-filled: header length 0
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        check_weight_files(tmp_path, PARAMETERS)
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 4 * 10**9]}}).encode()
    weights.write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))  # claims 4 GB it does not hold
    with pytest.raises(CheckpointError, match="header entry 'w' does not describe a tensor in the file"):
        check_weight_files(tmp_path, PARAMETERS)
    weights.unlink()
    with zipfile.ZipFile(tmp_path / "diffusion_pytorch_model.bin", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data/0", bytes(FORMAT_OVERHEAD + 200_000))  # compresses to a few kB
    with pytest.raises(CheckpointError, match=r"\.bin declares 17.0 MB of tensors, more than"):
        check_weight_files(tmp_path, PARAMETERS)
