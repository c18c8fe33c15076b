"""``python -m ddpm_lab.convert``: every mistake and fault in this table is one ``error:`` line, exit status 2,
found before anything is written, and leaves every file that was there before as it was.

The harness is ``tests/cli/mistakes.py``; the cases run ``main()`` in this process (test_convert_cli.py runs the
real command line).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from ddpm_lab.convert import main
from helpers import TINY_TRAIN, ours_checkpoint
from mistakes import case, check_case, counts, run_in_process, write_inputs

IMPORT = ("from_diffusers={tmp}/pipe", "out={tmp}/new.ckpt")
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
