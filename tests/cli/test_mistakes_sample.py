"""``python -m ddpm_lab.sample``: every mistake and fault in this table is one ``error:`` line, exit status 2,
found before any sampling, and leaves every file that was there before as it was (nothing added or changed).

The harness is ``tests/cli/mistakes.py``; most cases run ``main()`` in this process, a few the real command line.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from ddpm_lab.sample import main
from helpers import TINY_TRAIN, conditional_checkpoint, ours_checkpoint, write_image_folder
from mistakes import case, check_case, counts, run_in_process, run_subprocess, write_inputs

BASE = ("ckpt={tmp}/good.ckpt", "paths.output_root={tmp}/out", "n=2", "device=cpu")

CASES = [
    # mistyped keys: one line instead of Hydra's report (exit status 1)
    case("keys", "steps=5", "steps is not a setting of sample.yaml: check its spelling"),
    # required values
    case("missing", "ckpt=???", "ckpt is required but not set: add ckpt=<run>/checkpoints/last.ckpt"),
    case("missing", "paths.output_root=null", "paths.output_root must be a folder, got None"),
    case("missing", "paths.output_root=", "paths.output_root must be a folder, got ''"),
    # checkpoints: missing, broken, foreign, hostile, without what was asked for
    case("checkpoints", "ckpt={tmp}/missing.ckpt", "ckpt={tmp}/missing.ckpt does not exist"),
    case("checkpoints", "ckpt={tmp}/a_folder.ckpt", "ckpt={tmp}/a_folder.ckpt is a folder"),
    case("checkpoints", "ckpt={tmp}/empty.ckpt", "ckpt={tmp}/empty.ckpt is empty (0 bytes)"),
    case("checkpoints", "ckpt={tmp}/random.ckpt", "cannot read checkpoint {tmp}/random.ckpt"),
    case("checkpoints", "ckpt={tmp}/truncated.ckpt", "cannot read checkpoint {tmp}/truncated.ckpt"),
    case("checkpoints", "ckpt={tmp}/foreign.ckpt", "{tmp}/foreign.ckpt is not a ddpm_lab checkpoint"),
    case("checkpoints", "ckpt={tmp}/hostile.ckpt", "cannot read checkpoint {tmp}/hostile.ckpt safely"),
    case("checkpoints", "weights=ema", "{tmp}/good.ckpt holds no EMA weights: use weights=raw"),
    # classes and guidance: asked of an unconditional checkpoint, or outside a conditional one's classes
    case("checkpoints", "class=1", "class=1 needs a class-conditional checkpoint, but {tmp}/good.ckpt is uncond"),
    case("checkpoints", "guidance=2", "guidance=2 needs a class-conditional checkpoint"),
    case(
        "ranges",
        ["ckpt={tmp}/cond.ckpt", "class=c"],
        "class=c is not one of the model's 2 classes: use an index 0..1 or a name (a, b)",
    ),
    case("ranges", ["ckpt={tmp}/cond.ckpt", "guidance=3"], "guidance=3 needs classes to guide towards: add class="),
    # types: lists vs scalars, numbers that are not integers
    case("types", "n=8.5", "n must be an integer, got 8.5"),
    case("types", "n=abc", "n must be an integer, got 'abc'"),
    case("types", "seed=abc", "seed must be an integer"),
    case("types", "timesteps=5", "timesteps must be a list, got 5"),
    case("types", "timesteps=[abc]", "timesteps must be a list of integers >= 0, got ['abc']"),
    # ranges
    case("ranges", "n=0", "n must be >= 1, got 0"),
    # processes (devices=, num_nodes=)
    case("types", "devices=abc", "devices must be an integer, got 'abc'"),
    case("ranges", "devices=0", "devices must be >= 1, got 0"),
    case("ranges", "num_nodes=0", "num_nodes must be >= 1, got 0"),
    case("ranges", "devices=4096", "devices=4096 but this machine has"),
    case("ranges", "batch_size=-1", "batch_size must be >= 1, got -1"),
    case("ranges", "gif_frames=0", "gif_frames must be >= 1, got 0"),
    case("ranges", "timesteps=[-1]", "timesteps must be a list of integers >= 0, got [-1]"),
    case("ranges", "timesteps=[]", "timesteps is an empty list"),
    case("ranges", ["sampler=ddim", "sampler.steps=80"], "sampler.steps must be in [1, 50], got 80"),
    case("ranges", ["sampler=ddim", "sampler.eta=2"], "sampler.eta must be in [0, 1], got 2.0"),
    case(
        "ranges",
        ["ckpt={tmp}/edm.ckpt", "sampler=edm_heun", "sampler.sigma_min=100", "sampler.sigma_max=200"],
        "sampler.sigma_min=100 and sampler.sigma_max=200 leave nothing of the model's noise levels [0.002, 80]",
    ),
    case("ranges", ["sampler=edm_heun", "sampler.rho=0"], "sampler.rho must be > 0"),
    # enumerations
    case("enumerations", "weights=best", "weights must be one of ('auto', 'ema', 'raw'), got 'best'"),
    case("enumerations", "device=tpu", "device=tpu is not a device"),
    case("enumerations", ["sampler=ddpm", "sampler.variance=wide"], "sampler.variance must be one of"),
    case(
        "enumerations",
        ["sampler=diffusers", "sampler.scheduler=Euler"],
        "sampler.scheduler must be one of ('DDPMScheduler', 'DDIMScheduler', ",
    ),
    case(
        "enumerations",
        ["sampler=diffusers", "+sampler.options.order=3"],
        "sampler.options.order is not an option of UniPCMultistepScheduler; its options: ",
    ),
    case(
        "enumerations",
        ["sampler=diffusers", "sampler.spacing=quadratic"],
        "UniPCMultistepScheduler cannot take sampler.spacing=quadratic: use linspace, leading or trailing",
    ),
    # values diffusers accepts but that break sampling (DDIM's eta > 1 samples NaN: black images, exit status 0)
    case(
        "ranges",
        ["sampler=diffusers", "sampler.scheduler=DDIMScheduler", "+sampler.options.eta=1.5"],
        "sampler.options.eta must be in [0.0, 1.0], got 1.5",
    ),
    case("enumerations", "device=meta", "device=meta is not a device to sample on"),
    # checkpoints whose fields have the wrong type or absurd sizes
    case("checkpoints", "ckpt={tmp}/text_step.ckpt", "its global_step must be a non-negative integer, got 'abc'"),
    case("checkpoints", "ckpt={tmp}/long_names.ckpt", "its class name 1 is 100000 characters long, over the 200"),
    # output folders that cannot be created
    case("output", "paths.output_root={tmp}/a_file", "{tmp}/a_file is a file, not a folder"),
    case("output", "hydra.run.dir={tmp}/" + "x" * 300, "File name too long"),
    # options that do not apply: refused, never ignored
    case("inapplicable", "guidance_rescale=0.5", "guidance_rescale=0.5 needs a class-conditional checkpoint"),
    case(
        "inapplicable",
        ["ckpt={tmp}/cond.ckpt", "class=a", "guidance_rescale=0.5"],
        "guidance_rescale=0.5 rescales guided outputs, but guidance is 1 (none): add guidance=<w>",
    ),
    case("inapplicable", ["ckpt={tmp}/cond.ckpt", "guidance=1"], "guidance=1 needs classes to guide towards"),
    case(
        "inapplicable",
        ["ckpt={tmp}/cond.ckpt", "guidance_rescale=0.5"],
        "guidance_rescale=0.5 needs classes to guide towards",
    ),
    case(
        "inapplicable",
        ["ckpt={tmp}/no_null.ckpt", "class=1", "guidance=2"],
        "guidance=2 for {tmp}/no_null.ckpt: this model has no null (unconditional) class",
    ),
    case(
        "inapplicable",
        "ckpt={tmp}/no_null.ckpt",
        "unconditional samples of {tmp}/no_null.ckpt: this model has no null (unconditional) class",
    ),
    # classes are names: numbers name classes when every class is named by a number
    case(
        "ranges",
        ["ckpt={tmp}/numbered.ckpt", "class=0"],
        "class=0 is not one of the model's 3 classes, which are named by numbers (1, 2, 10)",
    ),
]
if not torch.backends.mps.is_available():
    CASES.append(case("enumerations", "device=mps", "device=mps but this machine has no Apple GPU"))
if not torch.cuda.is_available():
    CASES.append(case("enumerations", "device=cuda", "device=cuda but no CUDA GPU is visible"))
if importlib.util.find_spec("torchsde") is None:
    CASES.append(
        case(
            "missing",
            ["sampler=diffusers", "sampler.scheduler=DPMSolverSDEScheduler"],
            "sampler.scheduler=DPMSolverSDEScheduler needs torchsde: pip install torchsde",
        )
    )

SUBPROCESS = [c for c in CASES if c.overrides[0] in ("ckpt=???", "timesteps=5", "ckpt={tmp}/hostile.ckpt")]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mistakes_sample")
    write_inputs(root, lambda p: ours_checkpoint(p, [*TINY_TRAIN, f"dataset.root={root / 'images'}"]))
    conditional_checkpoint(root / "cond.ckpt", [*TINY_TRAIN, f"dataset.root={root / 'images'}"])
    edited = torch.load(root / "good.ckpt", weights_only=True)
    torch.save({**edited, "global_step": "abc"}, root / "text_step.ckpt")
    edited = torch.load(root / "cond.ckpt", weights_only=True)
    edited["ddpm_lab"]["config"]["dataset"]["class_names"] = ["a", "b" * 100_000]  # each grid row is titled
    torch.save(edited, root / "long_names.ckpt")
    write_image_folder(root / "numbers", n_per_class=1, size=8, classes=("10", "2", "1"))
    conditional_checkpoint(root / "numbered.ckpt", [*TINY_TRAIN, f"dataset.root={root / 'numbers'}"])
    no_null = ("conditioning=class", "++model.num_classes=3", "++model.null_class=false")  # as an import
    ours_checkpoint(root / "no_null.ckpt", [*TINY_TRAIN, f"dataset.root={root / 'images'}", *no_null])
    ours_checkpoint(root / "edm.ckpt", [*TINY_TRAIN, f"dataset.root={root / 'images'}", "diffusion=edm"])
    return root


def test_the_table_is_varied():
    assert len(CASES) >= 25 and len(set(CASES)) == len(CASES)
    assert set(counts(CASES)) == {
        "keys",
        "missing",
        "checkpoints",
        "types",
        "ranges",
        "enumerations",
        "output",
        "inapplicable",
    }


def test_the_base_config_samples_with_integral_floats(tmp: Path):
    """The control: the table's base launch works (``n=2.0`` is an integer), so each case fails for its mistake."""
    argv = [o.format(tmp=tmp) for o in BASE] + [
        "n=2.0",
        "gif_frames=3.0",
        "strip_n=2.0",
        "gif_n=2.0",
        f"hydra.run.dir={tmp}/control",
    ]
    outcome = run_in_process(main, argv, tmp)
    assert outcome.status == 0, outcome.stderr[-3000:]
    assert len(list((tmp / "control" / "samples").glob("*.png"))) == 2


@pytest.mark.parametrize("item", CASES, ids=[c.id for c in CASES])
def test_mistake_in_process(item, tmp: Path):
    check_case(lambda argv, cwd: run_in_process(main, argv, cwd), BASE, item, tmp)


@pytest.mark.parametrize("item", SUBPROCESS, ids=[c.id for c in SUBPROCESS])
def test_mistake_through_the_command_line(item, tmp: Path):
    check_case(lambda argv, cwd: run_subprocess("ddpm_lab.sample", argv, cwd), BASE, item, tmp)
