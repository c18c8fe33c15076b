"""Surviving kills: SIGKILL then resume= continues step, optimizer, LR schedule, EMA and the TensorBoard curve;
SIGTERM saves a checkpoint at the step it arrived."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ddpm_lab.artifacts.checkpoint import read_checkpoint
from helpers import TINY_TRAIN, run_cli, start_cli

LONG = (*TINY_TRAIN, "trainer.max_steps=1000", "trainer.val_check_interval=1000")


def wait_for(pattern: str, root: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> Path:
    """Poll until a file matching ``pattern`` under ``root`` exists, while ``proc`` keeps running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(
                f"training exited {proc.returncode} before {pattern} appeared:\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.02)
    raise AssertionError(f"{pattern} did not appear in {timeout} s")


def train_until(
    pattern: str, tmp_path: Path, image_folder: Path, *overrides: str
) -> tuple[subprocess.Popen, Path, Path]:
    """Start a long training run; once a file matching ``pattern`` exists, return (process, that file, log)."""
    log = tmp_path / "train.log"
    proc = start_cli("ddpm_lab.train", *LONG, f"dataset.root={image_folder}", *overrides, cwd=tmp_path, log=log)
    try:
        return proc, wait_for(pattern, tmp_path, proc, log), log
    except BaseException:
        proc.kill()
        raise


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_same_run(image_folder, tmp_path):
    proc, first, _ = train_until(
        "outputs/train/*/checkpoints/step_0000004.ckpt",
        tmp_path,
        image_folder,
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.sample_grid=null",
    )
    proc.kill()
    proc.wait()
    run = first.parents[1]
    for ckpt in run.glob("checkpoints/*.ckpt"):  # whatever the kill interrupted, every checkpoint is whole
        read_checkpoint(ckpt)
    resumed_from = max(read_checkpoint(c)["global_step"] for c in run.glob("checkpoints/*.ckpt"))
    assert 4 <= resumed_from < 8

    run_cli("ddpm_lab.train", f"resume='{run}'", "trainer.max_steps=8", cwd=tmp_path)
    assert [p.name for p in (tmp_path / "outputs" / "train").iterdir()] == [run.name]  # the same folder, no new run
    final = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 8
    # Counters that restart from zero on a fresh start all reached 8: the state continued from the checkpoint.
    adam = final["optimizer_states"][0]["state"]
    assert all(int(s["step"]) == 8 for s in adam.values())
    assert final["lr_schedulers"][0]["last_epoch"] == 8
    assert int(final["averaging_state"]["n_averaged"]) == 8 and final["callbacks"]["EMA"]["latest_update_step"] == 8
    # One TensorBoard run whose loss curve goes on where the checkpoint was, each step logged once. (Lightning
    # logs step k's loss at TensorBoard step k - 1, after step k's checkpoint: a kill right then can lose that point.)
    assert len(list((run / "tensorboard").glob("events.*"))) == 2
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == sorted(set(steps)) and set(steps) >= set(range(resumed_from - 1)) | set(range(resumed_from, 8))
    # The resumed launch left the original Hydra record alone and wrote its own beside it.
    assert (run / ".hydra" / "overrides.yaml").read_text().count("trainer.max_steps=1000") == 1
    (resumed,) = (run / ".hydra").glob("resume_*")
    assert "max_steps: 8" in (resumed / "config.yaml").read_text()


def last_tensors(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``<run>/checkpoints/last.ckpt`` but ModelCheckpoint's own (which files it kept)."""

    def walk(obj, prefix: str) -> dict[str, torch.Tensor]:
        if torch.is_tensor(obj):
            return {prefix: obj}
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        return {k: v for key, value in items for k, v in walk(value, f"{prefix}/{key}").items()}

    found = walk(read_checkpoint(run / "checkpoints" / "last.ckpt"), "")
    return {k: v for k, v in found.items() if "ModelCheckpoint" not in k}


def logged_losses(run: Path) -> dict[int, float]:
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/loss")}


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_continues_it_to_the_bit(image_folder, tmp_path, tiny_run):
    """SIGTERM saves last.ckpt at the step it arrived; ``resume=`` then ends exactly where the same run never
    stopped ends (``tiny_run``: TINY_TRAIN's 6 steps; warm-up 0 and a constant lr, so the longer max_steps,
    validation and checkpoint intervals of this run change no number of its first 6 steps)."""
    proc, grid, log = train_until(
        "outputs/train/*/samples/step_0000002.png",
        tmp_path,
        image_folder,
        "callbacks.model_checkpoint.every_n_train_steps=1000",
        "callbacks.sample_grid.every_n_steps=2",
    )
    proc.send_signal(signal.SIGTERM)
    try:
        returncode = proc.wait(timeout=120)
    finally:
        proc.kill()
    output = log.read_text()
    assert returncode == 128 + signal.SIGTERM, output[-3000:]
    run = grid.parents[1]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]  # no periodic one was due
    step = read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    assert 2 <= step < 6  # the step running when the signal came (a fast machine may finish one more)
    assert f"SIGTERM: saved {run / 'checkpoints' / 'last.ckpt'} at step {step}" in output
    assert "resume=" in output

    run_cli("ddpm_lab.train", f"resume='{run}'", "trainer.max_steps=6", cwd=tmp_path)
    resumed, never_stopped = last_tensors(run), last_tensors(tiny_run)
    assert resumed.keys() == never_stopped.keys() and len(resumed) > 100
    assert [k for k in resumed if not torch.equal(resumed[k], never_stopped[k])] == []
    # Every step's train/loss, to the bit. Step 6 is left out: at the end RunSummary adds the final metric to the
    # HPARAMS tab, train/loss here since this run does not validate (tiny_run's is val/loss).
    assert {s: v for s, v in logged_losses(run).items() if s < 6} == logged_losses(tiny_run)
