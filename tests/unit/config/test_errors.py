"""Every config mistake and bad file a user can cause: one clear line, a non-zero exit, and no files changed.

Most cases call the validation in-process on the composed config (the same call `train` makes first);
a handful go through the real command line to prove the exit status, the message on stderr and that the
output folder is left exactly as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ddpm_lab.config.checks import check_train_config as validate_train_config
from ddpm_lab.errors import UserError
from helpers import TINY_TRAIN, fake_run, ours_checkpoint, run_cli, snapshot


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> dict[str, Path]:
    tmp_path = tmp_path_factory.mktemp("errors")
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "random.ckpt").write_bytes(os.urandom(4096))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.ckpt")
    base = [*TINY_TRAIN, f"dataset.root={image_folder}", f"paths.output_root={tmp_path / 'out'}"]
    good = ours_checkpoint(tmp_path / "good.ckpt", base)
    (tmp_path / "truncated.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    ours_checkpoint(tmp_path / "wide.ckpt", [*base, "model.base_channels=16"])
    return {"tmp": tmp_path, "images": image_folder}


# (overrides, text the message must contain). {tmp} is the test's folder.
CONFIG_CASES = [
    (["schedule.timesteps=0"], "schedule.timesteps must be >= 1"),
    (["schedule.timesteps=abc"], "schedule.timesteps must be an integer"),
    (["schedule.beta_start=-0.1"], "schedule.beta_start must be in (0, 1)"),
    (["schedule.beta_end=1.5"], "schedule.beta_end must be in (0, 1)"),
    (
        ["schedule.beta_start=0.02", "schedule.beta_end=0.01"],
        "schedule.beta_end=0.01 must be larger than schedule.beta_start",
    ),
    (["schedule=cosine", "schedule.max_beta=2"], "max_beta must be in (0, 1]"),
    (["sampler.steps=51"], "sampler.steps must be in [1, 50]"),
    (["sampler.steps=0"], "sampler.steps must be in [1, 50]"),
    (["sampler=ddim", "sampler.steps=80"], "sampler.steps must be in [1, 50]"),
    (["sampler=ddim", "sampler.eta=1.5"], "sampler.eta must be in [0, 1]"),
    (["sampler=ddim", "sampler.eta=-0.1"], "sampler.eta must be in [0, 1]"),
    (["sampler.spacing=sideways"], "sampler.spacing must be one of"),
    (["callbacks.sample_grid.sampler.steps=100"], "callbacks.sample_grid.sampler.steps must be in [1, 50]"),
    (["diffusion.prediction=noise"], "prediction must be one of"),
    (["dataset.batch_size=0"], "dataset.batch_size must be >= 1"),
    (["dataset.batch_size=2.5"], "dataset.batch_size must be an integer"),
    (["dataset.image_size=15"], "image_size=15 cannot be halved"),
    (["model.in_channels=1"], "model.in_channels=1 disagrees with dataset.channels=3"),
    (["+model.out_channels=1"], "model.out_channels=1 disagrees with dataset.channels=3"),
    (["model.attention_resolutions=[5]"], "model.attention_resolutions [5] never occur"),
    (["optimizer.lr=0"], "optimizer.lr must be > 0"),
    (["optimizer.lr=fast"], "optimizer.lr must be a number"),
    (["trainer.precision=12-mixed"], "trainer.precision=12-mixed is unknown"),
    (["trainer.accelerator=quantum"], "trainer.accelerator=quantum is unknown"),
    ([f"trainer.devices={(os.cpu_count() or 1) + 1}"], "CPU cores"),
    (["trainer.devices=0"], "trainer.devices must be a positive number"),
    (["paths.output_root={tmp}/a_file/out"], "is a file, not a folder; choose another paths.output_root"),
    (["ckpt_path={tmp}/missing.ckpt"], "missing.ckpt does not exist"),
    (["ckpt_path={tmp}/empty.ckpt"], "empty.ckpt is empty (0 bytes)"),
    (["ckpt_path={tmp}/truncated.ckpt"], "cannot read checkpoint"),
    (["ckpt_path={tmp}/random.ckpt"], "cannot read checkpoint"),
    (["ckpt_path={tmp}/foreign.ckpt"], "is not a ddpm_lab checkpoint"),
    (["ckpt_path={tmp}/wide.ckpt"], "was trained with a different model (model.base_channels differ)"),
]
if not torch.cuda.is_available():
    CONFIG_CASES.append((["trainer.accelerator=gpu"], "this machine has no GPU"))


def test_valid_config_passes(files: dict[str, Path], cfg_train):
    """The control: the tiny training config, and continuing from a fitting checkpoint, pass the checks."""
    base = [*TINY_TRAIN, f"dataset.root={files['images']}", f"paths.output_root={files['tmp'] / 'out'}"]
    validate_train_config(cfg_train(*base))
    validate_train_config(cfg_train(*base, f"ckpt_path={files['tmp'] / 'good.ckpt'}"))


@pytest.mark.parametrize("overrides, message", CONFIG_CASES, ids=[" ".join(o) for o, _ in CONFIG_CASES])
def test_config_mistake_is_refused_before_work(overrides: list[str], message: str, files: dict[str, Path], cfg_train):
    tmp = files["tmp"]
    fake_run(tmp / "out")
    before = snapshot(tmp)
    cfg = cfg_train(
        *TINY_TRAIN,
        f"dataset.root={files['images']}",
        f"paths.output_root={tmp / 'out'}",
        *(o.format(tmp=tmp) for o in overrides),
    )
    with pytest.raises(UserError) as err:
        validate_train_config(cfg)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert snapshot(tmp) == before


# Through the real command line: (overrides, exit status, texts stderr must contain).
CLI_CASES = [
    (["schedule.timesteps=0"], 2, ["error: schedule.timesteps must be >= 1"]),
    (["model=unet_huge"], 1, ["Could not find 'model/unet_huge'", "unet_small", "unet_tiny"]),
    (["paths.output_root={tmp}/a_file/out"], 2, ["error: cannot create the output folder", "paths.output_root"]),
    (["ckpt_path={tmp}/random.ckpt"], 2, ["error: cannot read checkpoint", "random.ckpt"]),
    (
        ["dataset.root={tmp}/no_images"],
        2,
        ["error: image folder", "no_images does not exist"],
    ),  # found by the data module
]


@pytest.mark.parametrize("overrides, status, texts", CLI_CASES, ids=[" ".join(o) for o, _, _ in CLI_CASES])
def test_cli_reports_one_line_and_changes_nothing(
    overrides: list[str], status: int, texts: list[str], files: dict[str, Path]
):
    tmp = files["tmp"]
    fake_run(tmp / "out")
    before = snapshot(tmp)
    proc = run_cli(
        "ddpm_lab.train",
        *TINY_TRAIN,
        f"dataset.root={files['images']}",
        f"paths.output_root={tmp / 'out'}",
        *(o.format(tmp=tmp) for o in overrides),
        cwd=tmp,
        timeout=120,
        check=False,
    )
    assert proc.returncode == status, proc.stderr[-2000:]
    for text in texts:
        assert text in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    if status == 2:  # ours: one line, the last (Lightning may have printed its device summary before the data error)
        assert proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr
        assert proc.stderr.count("error: ") == 1, proc.stderr
    assert snapshot(tmp) == before
