"""The quick start end to end (offline digits), the start-up summary, checkpoint retention and resume.

Two launches: a short quickstart run that keeps every checkpoint (as runs before retention existed did), then
``resume=`` with a policy of 2: the earlier run's checkpoints stay, the new ones are pruned to the newest 2.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import run_cli

pytestmark = pytest.mark.slow

QUICK = (
    "experiment=quickstart",
    "debug=default",  # unet_tiny (with the quickstart's channel settings), tiny grids
    "trainer=cpu",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "schedule.timesteps=50",
    "dataset.batch_size=16",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "callbacks.sample_grid=null",  # not under test here: grids, strips and the schedule figure cost seconds
    "callbacks.diffusion_strips=null",
    "callbacks.run_summary=null",
    "callbacks.progress_bar=null",
    "callbacks.startup_summary.skip_steps=1",
    "callbacks.startup_summary.timed_steps=2",
)
UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def ckpts(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))


def test_quickstart_summary_retention_and_resume(tmp_path: Path) -> None:
    keep_all = ("callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.monitor=null")
    run_cli("ddpm_lab.train", *QUICK, *keep_all, "hydra.run.dir=run", cwd=tmp_path)
    run = tmp_path / "run"
    log = (run / "train.log").read_text()
    assert "digits: 1,765 train / 32 val images of 1x16x16" in log  # no download: the images ship with sklearn
    assert re.search(r"model: +UNet, [\d.]+M parameters, [\d.e-]+ GFLOPs per image forward", log)
    assert "batch:       16 images per optimizer step = 16 per device x 1 device(s) x 1 accumulated" in log
    assert "steps:       0 -> 4 (" in log and "lr warm-up 0 steps then CosineLR" in log
    assert re.search(r"time estimate: [\d.e-]+ s per step \(steps 1-3\)", log)
    # The disk estimate (4 periodic + last.ckpt) is what the files weigh.
    count, size, unit = re.search(r"at most (\d+) x ([\d.]+) (\w+) =", log).groups()
    assert int(count) == 5 and ckpts(run) == ["last.ckpt"] + [f"step_000000{i}.ckpt" for i in range(1, 5)]
    actual = (run / "checkpoints" / "last.ckpt").stat().st_size
    assert abs(float(size) * UNITS[unit] - actual) < 0.1 * actual
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    text = events.Tensors("summary/startup/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "digits: 1,765 train" in text and "checkpoints:" in text
    assert "summary/time_estimate/text_summary" in events.Tags()["tensors"]

    # Resume with a retention of 2: the first launch's files are left alone (its policy kept all of them).
    keep_two = ("callbacks.model_checkpoint.save_top_k=2", "callbacks.model_checkpoint.monitor=step")
    run_cli("ddpm_lab.train", f"resume='{run}'", "trainer.max_steps=7", *keep_two, cwd=tmp_path)
    resumed = (run / "train.log").read_text()[len(log) :]
    assert "steps:       4 -> 7" in resumed and "already in the folder" in resumed
    assert ckpts(run) == ["last.ckpt"] + [f"step_000000{i}.ckpt" for i in (1, 2, 3, 4, 6, 7)]
