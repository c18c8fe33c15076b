"""``python -m ddpm_lab.train``: every mistake and fault in this table is one ``error:`` line, exit status 2,
found before any work, and leaves every file that was there before as it was (nothing added, nothing changed).

The harness is ``tests/cli/mistakes.py``; most cases run ``main()`` in this process, a few the real command line.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest
import torch

from ddpm_lab.config import run_folder
from ddpm_lab.train import main
from helpers import TINY_TRAIN, ours_checkpoint
from mistakes import case, check_case, counts, run_in_process, run_subprocess, snapshot, write_inputs

BASE = (*TINY_TRAIN, "dataset.root={tmp}/images", "paths.output_root={tmp}/out")

CASES = [
    # mistyped keys: one line instead of Hydra's report (exit status 1)
    case("keys", "trainer.max_step=5", "trainer.max_step is not a setting of train.yaml"),
    case("keys", "model.base_channel=8", "model.base_channel is not a setting of train.yaml"),
    # types: an integral 8.0 is fine where an integer belongs, 8.5 or text is not; lists vs scalars; flags
    case("types", "seed=abc", "seed must be an integer"),
    case("types", "seed=1.5", "seed must be an integer"),
    case("types", "trainer.max_steps=8.5", "trainer.max_steps must be an integer"),
    case("types", "dataset.image_size=16.5", "dataset.image_size must be an integer"),
    case("types", "model.channel_mults=4", "model.channel_mults must be a non-empty list"),
    case("types", "warmup_steps=abc", "warmup_steps must be an integer"),
    case("types", "optimizer.lr=fast", "optimizer.lr must be a number"),
    case("types", "dataset.flip=maybe", "dataset.flip must be true or false"),
    case("types", "compile=yes", "compile must be true or false"),
    case("types", "dataset.augment=often", "dataset.augment must be a number"),
    case("types", "dataset.augment_rotate=maybe", "dataset.augment_rotate must be true or false"),
    case("types", "deterministic=sometimes", "deterministic must be true or false"),
    case("types", ["deterministic=true", "seed=null"], "deterministic=true needs a seed"),
    # ranges: negative sizes, intervals of 0, betas outside [0, 1)
    case(
        "ranges", "callbacks.model_checkpoint.every_n_train_steps=0", "callbacks.model_checkpoint.every_n_train_steps"
    ),
    case("ranges", "trainer.val_check_interval=0", "trainer.val_check_interval must be"),
    case("ranges", "trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be >= 1"),
    case("ranges", "trainer.gradient_clip_val=-1", "trainer.gradient_clip_val must be >= 0"),
    case("ranges", "trainer.max_steps=-5", "trainer.max_steps must be >= -1"),
    case("ranges", "trainer.num_nodes=0", "trainer.num_nodes must be >= 1"),
    case("ranges", "dataset.val_size=-1", "dataset.val_size must be >= 0"),
    case("ranges", "dataset.batch_size=-8", "dataset.batch_size must be >= 1"),
    case("ranges", "model.base_channels=0", "model.base_channels must be >= 1"),
    case("ranges", "model.dropout=1.5", "model.dropout must be in [0, 1)"),
    case("ranges", "schedule.beta_end=1.0", "schedule.beta_end must be in (0, 1)"),
    case("ranges", "schedule.beta_start=-0.1", "schedule.beta_start must be in (0, 1)"),
    case("ranges", "warmup_steps=-1", "warmup_steps must be >= 0"),
    case("ranges", "callbacks.ema.decay=1.5", "callbacks.ema.decay must be in [0, 1]"),
    case("ranges", "optimizer.weight_decay=-1", "optimizer.weight_decay must be >= 0, got -1.0"),
    case("ranges", "optimizer.betas=[2,0.9]", "optimizer.betas[0] must be in [0, 1), got 2.0"),
    case("ranges", "+optimizer.eps=0", "optimizer.eps must be > 0, got 0.0"),
    case("types", "optimizer.betas=0.9", "optimizer.betas must be a list of two numbers, got 0.9"),
    case("ranges", "dataset.augment=1.5", "dataset.augment must be in [0, 1], got 1.5"),
    case(
        "ranges",
        ["callbacks=posthoc_ema", "callbacks.posthoc_ema.sigma_rels=[0.1,0.5]"],
        "callbacks.posthoc_ema.sigma_rels=0.5 is out of range",
    ),
    case(
        "ranges",
        ["callbacks=posthoc_ema", "callbacks.posthoc_ema.every_n_steps=0"],
        "callbacks.posthoc_ema.every_n_steps must be >= 1",
    ),
    case("ranges", ["lr_schedule=linear", "lr_schedule.floor=2"], "lr_schedule.floor must be in [0, 1]"),
    case(
        "ranges",
        ["lr_schedule=cosine", "trainer.max_steps=-1"],
        "lr_schedule.total_steps=-1: CosineLR decays over a known number of steps",
    ),
    case(
        "ranges", ["conditioning=class", "conditioning.p_uncond=1"], "conditioning.p_uncond must be in [0, 1), got 1.0"
    ),
    # EDM: values, and what it has no counterpart for
    case("ranges", ["diffusion=edm", "diffusion.sigma_data=0"], "diffusion.sigma_data must be > 0"),
    case("ranges", ["diffusion=edm", "schedule.sigma_min=100"], "schedule.sigma_min=100 must be below"),
    case("ranges", ["sampler=edm_heun", "sampler.sigma_max=0.001"], "sampler.sigma_min=0.002 must be below"),
    case("ranges", ["sampler=edm_euler", "sampler.eta=2"], "sampler.eta must be in [0, 1]"),
    case(
        "ranges",
        ["sampler=edm_dpm_solver", "sampler.sigma_min=200", "sampler.sigma_max=300"],
        "sampler.sigma_min=200 and sampler.sigma_max=300 leave nothing of the model's noise levels",
    ),
    case("keys", ["diffusion=edm", "diffusion.prediction=v"], "diffusion.prediction is not a setting of train.yaml"),
    case("enumerations", ["diffusion=edm", "val_bpd_every=1"], "val_bpd_every=1 needs DDPM's variational bound"),
    case(
        "enumerations",
        ["diffusion=edm", "schedule.zero_terminal_snr=true"],
        "diffusion=edm needs a finite σ_max, but schedule.zero_terminal_snr=true",
    ),
    # required values
    case("missing", "dataset.root=???", "dataset.root is required but not set: add dataset.root=<folder"),
    case("missing", "paths.output_root=null", "paths.output_root must be a folder, got None"),
    case("missing", "ckpt_path=''", "ckpt_path= is empty"),
    # enumerations
    case("enumerations", "dataset.split=validation", "dataset.split must be one of ('train', 'test', 'all')"),
    case("enumerations", "dataset.on_error=ignore", "dataset.on_error must be one of ('skip', 'raise')"),
    case("enumerations", "dataset.channels=2", "dataset.channels must be one of (1, 3)"),
    case("enumerations", "trainer.accelerator=quantum", "trainer.accelerator=quantum is unknown"),
    case("enumerations", "trainer.precision=12", "trainer.precision=12 is unknown"),
    case("enumerations", "diffusion.loss_weighting=foo", "diffusion.loss_weighting must be one of"),
    case("enumerations", "sampler.variance=wide", "sampler.variance must be one of"),
    case("enumerations", "sampler.spacing=sideways", "sampler.spacing must be one of"),
    # learned variances: a loss that trains nothing new; channels that contradict the variance (unit tests: the rest)
    case("enumerations", "diffusion.loss=hybrid", "diffusion.loss=hybrid stops L_vlb's gradient to the mean"),
    case(
        "ranges",
        ["diffusion.variance=learned_range", "diffusion.loss=hybrid", "+model.out_channels=3"],
        "model.out_channels=3 but diffusion.variance=learned_range needs 2 x dataset.channels = 6",
    ),
    # checkpoints and run folders: missing, broken, foreign, hostile
    case("checkpoints", "ckpt_path={tmp}/missing.ckpt", "ckpt_path={tmp}/missing.ckpt does not exist"),
    case("checkpoints", "ckpt_path={tmp}/a_folder.ckpt", "ckpt_path={tmp}/a_folder.ckpt is a folder"),
    case("checkpoints", "ckpt_path={tmp}/empty.ckpt", "empty.ckpt is empty (0 bytes)"),
    case("checkpoints", "ckpt_path={tmp}/random.ckpt", "cannot read checkpoint {tmp}/random.ckpt"),
    case("checkpoints", "ckpt_path={tmp}/truncated.ckpt", "cannot read checkpoint {tmp}/truncated.ckpt"),
    case("checkpoints", "ckpt_path={tmp}/foreign.ckpt", "{tmp}/foreign.ckpt is not a ddpm_lab checkpoint"),
    case("checkpoints", "ckpt_path={tmp}/hostile.ckpt", "{tmp}/hostile.ckpt"),
    case("checkpoints", "resume={tmp}/empty_folder", "resume={tmp}/empty_folder is not a training run folder"),
    case(
        "checkpoints",
        ["ckpt_path={tmp}/good.ckpt", "dataset.augment=0.2"],
        "was trained with model.augment_dim=0 and this run builds 3 (it follows dataset.augment",
    ),
    case(
        "checkpoints",
        ["callbacks=posthoc_ema", "ckpt_path={tmp}/midway.ckpt"],
        "(step 3) was trained without it: post-hoc EMA must follow a run from step 0",
    ),
    # data: found inside trainer.fit, after Lightning opened tensorboard/ in the run folder; the folder goes again
    case("data", "dataset.root={tmp}/missing", "image folder {tmp}/missing does not exist"),
    case("data", "dataset.root={tmp}/a_file", "image folder {tmp}/a_file is a file"),
    case("data", "dataset.root={tmp}/empty_folder", "{tmp}/empty_folder holds no images"),
    case("data", "dataset.root={tmp}/garbage", "unreadable image(s) under {tmp}/garbage"),
    case("data", "dataset.root={tmp}/one_image", "1 training images are fewer than one batch"),
    case("data", "dataset.batch_size=64", "fewer than one batch (dataset.batch_size=64)"),
    case(
        "data",
        ["conditioning=class", "dataset.root={tmp}/one_image"],
        "conditioning=class needs class labels, but ImageFolderDataModule under {tmp}/one_image has none",
    ),
    # output folders that cannot be created
    case(
        "output",
        "paths.output_root={tmp}/a_file",
        "{tmp}/a_file is a file, not a folder; choose another paths.output_root",
    ),
    case("output", "paths.output_root={tmp}/a_file/below", "{tmp}/a_file is a file, not a folder"),
    case("output", "hydra.run.dir={tmp}/out/" + "x" * 300, "File name too long"),
    case("output", "paths.output_root={tmp}/" + "y" * 300, "File name too long"),
]
if not torch.backends.mps.is_available():
    CASES.append(case("enumerations", "trainer.accelerator=mps", "trainer.accelerator=mps is not present on this"))
if not torch.cuda.is_available():
    CASES.append(case("enumerations", "trainer.accelerator=gpu", "this machine has no GPU"))
    CASES.append(case("enumerations", "trainer.accelerator=cuda", "trainer.accelerator=cuda is not present on this"))
if (os.cpu_count() or 1) < 64:
    CASES.append(case("ranges", "trainer.devices=64", "trainer.devices=64 but this machine has"))

# Through the real command line: a missing value, a data error inside trainer.fit, a hostile pickle.
SUBPROCESS = [
    c
    for c in CASES
    if c.overrides[0].startswith(("dataset.root=???", "dataset.root={tmp}/empty", "ckpt_path={tmp}/hostile"))
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mistakes_train")
    write_inputs(root, lambda p: ours_checkpoint(p, [*TINY_TRAIN, f"dataset.root={root / 'images'}"]))
    midway = torch.load(root / "good.ckpt", weights_only=True)
    midway["global_step"] = 3  # as if trained 3 steps without post-hoc EMA
    torch.save(midway, root / "midway.ckpt")
    return root


def test_the_table_is_large_and_varied():
    assert len(CASES) >= 45 and len(set(CASES)) == len(CASES)
    assert set(counts(CASES)) == {"keys", "types", "ranges", "missing", "enumerations", "checkpoints", "data", "output"}


def test_the_base_config_trains_with_integral_floats_and_seed_null(tmp: Path):
    """The control: the table's base launch works, with ``8.0`` where integers belong and the documented
    ``seed=null`` (nondeterministic), so each case fails for its own mistake."""
    argv = [o.format(tmp=tmp) for o in BASE] + [
        "seed=null",
        "trainer.max_steps=3.0",
        "trainer.val_check_interval=3.0",
        "callbacks.model_checkpoint.every_n_train_steps=3.0",
        "callbacks.sample_grid=null",
        f"hydra.run.dir={tmp}/control",
    ]
    outcome = run_in_process(main, argv, tmp)
    assert outcome.status == 0, outcome.stderr[-3000:]
    assert (tmp / "control" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("item", CASES, ids=[c.id for c in CASES])
def test_mistake_in_process(item, tmp: Path):
    check_case(lambda argv, cwd: run_in_process(main, argv, cwd), BASE, item, tmp)


@pytest.mark.parametrize("item", SUBPROCESS, ids=[c.id for c in SUBPROCESS])
def test_mistake_through_the_command_line(item, tmp: Path):
    check_case(lambda argv, cwd: run_subprocess("ddpm_lab.train", argv, cwd), BASE, item, tmp)


def test_a_data_error_inside_fit_removes_the_folder_it_had_started(tmp: Path):
    """The run folder of a launch whose data fails in ``setup`` got ``.hydra/``, ``train.log`` and ``tensorboard/``
    before the error: all of it goes, while the earlier run in the same output root stays byte for byte."""
    before = snapshot(tmp / "out")
    outcome = run_in_process(main, [o.format(tmp=tmp) for o in BASE] + [f"dataset.root={tmp}/garbage"], tmp)
    assert outcome.status == 2 and "garbage" in outcome.stderr.strip().splitlines()[-1]
    assert snapshot(tmp / "out") == before


@pytest.mark.parametrize("module", ["mlflow", "wandb"])
def test_a_logger_whose_extra_is_missing(module: str, tmp: Path, monkeypatch: pytest.MonkeyPatch):
    """``logger=mlflow`` or ``logger=wandb`` without its package: one line naming the extra to install, before any
    work. ``sys.modules[module] = None`` makes Python answer as if the package were not installed."""
    monkeypatch.setitem(sys.modules, module, None)
    culprit = f'logger.{module} needs the {module} package, which is not installed: pip install "ddpm_lab[{module}]"'
    item = case("missing", f"logger=[tensorboard,{module}]", culprit)
    check_case(lambda argv, cwd: run_in_process(main, argv, cwd), BASE, item, tmp)


def test_a_full_disk_at_start_is_one_line_and_leaves_nothing(tmp: Path, monkeypatch: pytest.MonkeyPatch):
    """ENOSPC while the run folder is set up (its lock is the first byte written): exit status 2, the folders this
    launch made are gone again."""

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_folder.os, "pwrite", full)
    item = case("output", "hydra.run.dir={tmp}/out/new/run", "cannot set up the run folder")
    check_case(lambda argv, cwd: run_in_process(main, argv, cwd), BASE, item, tmp)
