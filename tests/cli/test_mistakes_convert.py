"""``python -m ddpm_lab.convert``: every mistake and fault in this table is one ``error:`` line, exit status 2,
found before anything is written, and leaves every file that was there before as it was.

The harness is ``tests/cli/mistakes.py``; the cases run ``main()`` in this process (test_convert_cli.py runs the
real command line).
"""

from __future__ import annotations

import json
import resource
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from ddpm_lab.convert import main
from helpers import TINY_TRAIN, ours_checkpoint
from mistakes import MAX_SECONDS, case, check_case, counts, run_in_process, write_inputs

IMPORT = ("from_diffusers={tmp}/pipe", "out={tmp}/new.ckpt")
HUGE = 64 << 20  # a zero-filled weights file far larger than the tiny U-Net's ~17 MB cap
EXPORT = ("ckpt={tmp}/good.ckpt", "to_diffusers={tmp}/new_folder")

CASES = [
    case("keys", [*IMPORT, "ckpt_pth=x"], "ckpt_pth is not a setting of convert.yaml"),
    # directions
    case("missing", [], "convert got nothing: pass from_diffusers=DIR out=FILE.ckpt"),
    case("missing", "from_diffusers={tmp}/pipe", "convert got from_diffusers=: pass"),
    case("missing", [*IMPORT, "ckpt={tmp}/good.ckpt"], "convert got ckpt=, from_diffusers=, out=: pass"),
    case("missing", [*EXPORT, "revision=main"], "revision=main picks a version of a Hugging Face Hub model"),
    case("types", ["from_diffusers={tmp}/pipe", "out=''"], "out= must be a path, got ''"),
    case("types", [*IMPORT, "revision=''"], "revision= must be a branch, tag or commit of a Hub model, got ''"),
    case("types", [*EXPORT, "fid=abc"], "fid must be a number, got 'abc'"),
    case("ranges", [*EXPORT, "fid=-1"], "fid must be >= 0"),
    case("enumerations", [*EXPORT, "weights=best"], "weights must be one of ('auto', 'ema', 'raw')"),
    # diffusers folders
    case(
        "data", ["from_diffusers={tmp}/missing", "out={tmp}/new.ckpt"], "from_diffusers={tmp}/missing is not a folder"
    ),
    case("data", ["from_diffusers={tmp}/empty_folder", "out={tmp}/new.ckpt"], "holds neither model_index.json"),
    # Hub ids (offline here: HF_HUB_OFFLINE=1, an empty cache)
    case(
        "data",
        ["from_diffusers=someone/absent", "out={tmp}/new.ckpt"],
        "from_diffusers=someone/absent is not a folder here nor in the Hugging Face cache",
    ),
    case("data", ["from_diffusers=someone/bad--name", "out={tmp}/n.ckpt"], "is not a valid Hugging Face Hub id"),
    case("data", [*IMPORT, "revision=main"], "from_diffusers={tmp}/pipe is a local path: drop revision="),
    case("data", ["from_diffusers={tmp}/cond", "out={tmp}/new.ckpt"], "holds a UNet2DConditionModel: only"),
    case("data", ["from_diffusers={tmp}/unet_only", "out={tmp}/n.ckpt"], "{tmp}/unet_only has no scheduler_config"),
    case("data", ["from_diffusers={tmp}/no_weights", "out={tmp}/new.ckpt"], "cannot load the U-Net weights in"),
    case("data", ["from_diffusers={tmp}/hostile_bin", "out={tmp}/new.ckpt"], "cannot load the U-Net weights in"),
    # untrusted configs: every field type- and range-checked before anything is built
    case("data", ["from_diffusers={tmp}/zero_size", "out={tmp}/n.ckpt"], "sample_size=0 must be an integer in [1,"),
    case("data", ["from_diffusers={tmp}/float_width", "out={tmp}/n.ckpt"], "block_out_channels=[8.5, 16] must be"),
    case("data", ["from_diffusers={tmp}/text_steps", "out={tmp}/n.ckpt"], "num_train_timesteps='20' must be an"),
    case("data", ["from_diffusers={tmp}/huge_weights", "out={tmp}/n.ckpt"], "67.1 MB, more than a U-Net of 41,899"),
    # checkpoints
    case("checkpoints", ["ckpt={tmp}/missing.ckpt", "to_diffusers={tmp}/n"], "ckpt={tmp}/missing.ckpt does not exist"),
    case("checkpoints", ["ckpt={tmp}/random.ckpt", "to_diffusers={tmp}/n"], "cannot read checkpoint {tmp}/random"),
    case("checkpoints", ["ckpt={tmp}/foreign.ckpt", "to_diffusers={tmp}/n"], "is not a ddpm_lab checkpoint"),
    case("checkpoints", ["ckpt={tmp}/hostile.ckpt", "to_diffusers={tmp}/n"], "{tmp}/hostile.ckpt"),
    case("checkpoints", [*EXPORT, "weights=ema"], "holds no EMA weights"),
    case("checkpoints", ["ckpt={tmp}/odd.ckpt", "to_diffusers={tmp}/n"], "cannot express this U-Net: model.groups"),
    case(
        "checkpoints",
        ["ckpt={tmp}/edm_linear.ckpt", "to_diffusers={tmp}/n"],
        "diffusers' EDM schedulers put σ on the Karras ramp only, but this EDM model was trained with schedule=linear",
    ),
    # nothing is overwritten
    case("output", ["from_diffusers={tmp}/pipe", "out={tmp}/good.ckpt"], "out={tmp}/good.ckpt already exists"),
    case("output", ["ckpt={tmp}/good.ckpt", "to_diffusers={tmp}/images"], "already exists and is not empty"),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mistakes_convert")
    write_inputs(root, lambda p: ours_checkpoint(p, [*TINY_TRAIN, f"dataset.root={root / 'images'}"]))
    edm_linear = [*TINY_TRAIN, f"dataset.root={root / 'images'}", "diffusion=edm", "schedule=linear"]
    ours_checkpoint(root / "edm_linear.ckpt", edm_linear)
    ours_checkpoint(root / "odd.ckpt", [*TINY_TRAIN, f"dataset.root={root / 'images'}", "model.base_channels=6"])
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=20)).save_pretrained(root / "pipe")
    for name, files in {
        "cond": {"config.json": {"_class_name": "UNet2DConditionModel"}, "scheduler_config.json": {}},
        "unet_only": {"config.json": {"_class_name": "UNet2DModel"}},
        "no_weights": {"config.json": json.loads((root / "pipe" / "unet" / "config.json").read_text())},
    }.items():
        (root / name).mkdir()
        for file, content in files.items():
            (root / name / file).write_text(json.dumps(content))
    (root / "no_weights" / "scheduler_config.json").write_text("{}")
    unet_config = json.loads((root / "pipe" / "unet" / "config.json").read_text())
    for name, (file, field, value) in {
        "zero_size": ("unet/config.json", "sample_size", 0),
        "float_width": ("unet/config.json", "block_out_channels", [8.5, 16]),
        "text_steps": ("scheduler/scheduler_config.json", "num_train_timesteps", "20"),
    }.items():
        shutil.copytree(root / "pipe", root / name)
        config = json.loads((root / name / file).read_text())
        (root / name / file).write_text(json.dumps({**config, field: value}))
    shutil.copytree(root / "pipe", root / "huge_weights")
    with open(root / "huge_weights" / "unet" / "diffusion_pytorch_model.safetensors", "wb") as f:
        f.truncate(HUGE)  # zero-filled and sparse: no disk, and no memory unless read whole
    assert unet_config["sample_size"] == 8
    # Ho et al.'s files are pickles (.bin): one that would run code must be refused, never unpickled freely
    shutil.copytree(root / "no_weights", root / "hostile_bin")
    shutil.copy(root / "hostile.ckpt", root / "hostile_bin" / "diffusion_pytorch_model.bin")
    return root


def test_the_table_is_varied():
    assert len(CASES) >= 20 and len(set(CASES)) == len(CASES)
    assert set(counts(CASES)) == {"keys", "missing", "types", "ranges", "enumerations", "data", "checkpoints", "output"}


@pytest.mark.parametrize("item", CASES, ids=[c.id for c in CASES])
def test_mistake_in_process(item, tmp: Path):
    check_case(lambda argv, cwd: run_in_process(main, argv, cwd), (), item, tmp)


def test_a_huge_zero_filled_weights_file_is_never_read_into_memory(tmp: Path, tmp_path: Path):
    """8 GB of zeros (sparse) where the weights belong: its size is compared with what the config's network can
    hold (parameters x 8 bytes + overhead) from the file system alone, so this process's peak memory grows by far
    less than the file; the file is left as it was (compared by size and time: hashing it would read it)."""
    folder = tmp_path / "huge"
    shutil.copytree(tmp / "pipe", folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    with open(weights, "wb") as f:
        f.truncate(8 << 30)
    before, stat = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, weights.stat()  # KiB
    outcome = run_in_process(main, [f"from_diffusers={folder}", f"out={tmp_path / 'n.ckpt'}"], tmp_path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    lines = outcome.stderr.strip().splitlines()
    assert outcome.status == 2 and len(lines) == 1 and "8589.9 MB, more than a U-Net of 41,899" in lines[0], lines
    assert outcome.seconds < MAX_SECONDS and peak < 500_000, f"{outcome.seconds:.1f} s, peak +{peak} KiB"
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert not (tmp_path / "n.ckpt").exists()
