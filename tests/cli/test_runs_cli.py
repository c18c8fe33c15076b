"""No run is ever lost or overwritten: the final step is always saved (max_steps, SIGTERM, Ctrl-C, even in the
middle of a long sample grid), a run folder belongs to one launch and one process, failed launches (fresh,
resume, multirun job) leave every other file as it was, and two launches in the same second get two runs."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddpm_lab.artifacts.checkpoint import read_checkpoint
from helpers import TINY_TRAIN, cli_env, run_cli, snapshot, start_cli

LONG = (*TINY_TRAIN, "trainer.max_steps=1000", "trainer.val_check_interval=1000")
# A sample grid that takes about a minute on a CPU (256 images, 1000 reverse steps; ~16 s per 64) every 3 steps.
SLOW_GRID = (
    "schedule.timesteps=1000",
    "callbacks.sample_grid.every_n_steps=3",
    "callbacks.sample_grid.n=256",
    "callbacks.sample_grid.sampler.steps=1000",
    "callbacks.model_checkpoint.every_n_train_steps=2",
)


def ctrl_c(proc: subprocess.Popen, tries: int = 20) -> int:
    """Press Ctrl-C until the run exits, as a user would; its exit status. Under heavy load a SIGINT sent right
    after SIGCONT was once seen to be lost (the run trained on to max_steps); a second press is ignored by
    Lightning once its graceful shutdown has begun, so pressing again changes nothing else."""
    for _ in range(tries):
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait(timeout=60)


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {path} appeared:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_sigterm_during_a_long_sample_grid_saves_first_and_exits_at_once(image_folder, tmp_path):
    signum = signal.SIGTERM
    log = tmp_path / "train.log"
    proc = start_cli(
        "ddpm_lab.train", *LONG, *SLOW_GRID, f"dataset.root={image_folder}", "hydra.run.dir=run", cwd=tmp_path, log=log
    )
    run = tmp_path / "run"
    try:
        wait_for(run / "checkpoints" / "step_0000002.ckpt", proc, log)
        time.sleep(2.0)  # step 3 is a fraction of a second: its grid (about a minute) is running now
        proc.send_signal(signum)
        signalled = time.monotonic()
        returncode = proc.wait(timeout=60)
        elapsed = time.monotonic() - signalled
    finally:
        proc.kill()
    output = log.read_text()
    assert returncode == 128 + signum, output[-3000:]
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"  # the grid alone would take about a minute more
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert not (run / "samples" / "step_0000003.png").exists()  # the grid was cut short, not finished
    assert f"SIGTERM: saved {run / 'checkpoints' / 'last.ckpt'} at step 3" in output
    assert f"resume='{run}'" in output
    assert "SIGTERM: sampling stopped at image 0, timestep" in output
    assert not (run / ".lock").exists()  # released on the way out


@pytest.mark.slow
def test_a_failed_launch_removes_only_what_it_created(tmp_path: Path):
    other = tmp_path / "outputs" / "train" / "someone_elses_run"
    other.mkdir(parents=True)
    (other / "train.log").write_text("another launch's log")
    before = snapshot(tmp_path)
    proc = run_cli("ddpm_lab.train", "debug=default", "optimizer.lr=-1", cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 2 and "optimizer.lr" in one_error_line(proc.stderr)
    assert snapshot(tmp_path) == before
    assert [p.name for p in (tmp_path / "outputs" / "train").iterdir()] == ["someone_elses_run"]


@pytest.mark.slow
def test_two_launches_in_the_same_second_make_two_complete_runs(image_folder: Path, tmp_path: Path):
    # max_steps=2 is no multiple of the checkpoint interval (3): last.ckpt still holds step 2. The default folder
    # name with its time frozen to one second (two real launches may straddle a second on a busy machine).
    args = [*TINY_TRAIN, "trainer.max_steps=2", f"dataset.root={image_folder}", f"paths.output_root={tmp_path}"]
    args.append("hydra.run.dir=${paths.output_root}/train/2026-01-01_00-00-00_${run_uid:}_same")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ddpm_lab.train", *args], cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    runs = sorted((tmp_path / "train").iterdir())
    assert len(runs) == 2  # the same second, two folders
    assert all("=" not in r.name and "," not in r.name for r in runs)
    for run in runs:
        assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
        last = read_checkpoint(run / "checkpoints" / "last.ckpt")
        assert last["global_step"] == 2
        # The raw weights to continue from, not the EMA average Lightning copies over them at the end.
        assert not all(torch.equal(last["state_dict"][k], v) for k, v in last["current_model_state"].items())
        assert (run / ".hydra" / "config.yaml").is_file() and len(list((run / "tensorboard").glob("events.*"))) == 1
        assert not (run / ".lock").exists()


@pytest.mark.slow
def test_failing_launches_next_to_a_running_run_leave_it_intact(image_folder: Path, tmp_path: Path):
    log = tmp_path / "train.log"
    proc = start_cli(
        "ddpm_lab.train", *LONG, f"dataset.root={image_folder}", "hydra.run.dir=run", "callbacks.sample_grid=null",
        "trainer.max_steps=100000",  # never done before the Ctrl-C below, however slow the machine
        "callbacks.model_checkpoint.save_top_k=-1",  # step 3's checkpoint stays until the test has seen it
        cwd=tmp_path, log=log,
    )  # fmt: skip
    run = tmp_path / "run"
    try:
        wait_for(run / "checkpoints" / "step_0000003.ckpt", proc, log)
        proc.send_signal(signal.SIGSTOP)  # paused: whatever changes now was written by the failing launches
        before = snapshot(run)
        resumed = run_cli("ddpm_lab.train", f"resume={run}", cwd=tmp_path, check=False, timeout=120)
        fresh = run_cli("ddpm_lab.train", "debug=default", "hydra.run.dir=run", cwd=tmp_path, check=False, timeout=120)
        assert snapshot(run) == before
        proc.send_signal(signal.SIGCONT)
        assert ctrl_c(proc) == 128 + signal.SIGINT  # Ctrl-C: saves last.ckpt and says how to resume, like SIGTERM
    finally:
        proc.kill()
    output = log.read_text()
    step = read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    assert step >= 3 and f"Ctrl-C: saved {run / 'checkpoints' / 'last.ckpt'} at step {step}" in output
    assert f"resume='{run}'" in output and not (run / ".lock").exists()
    assert resumed.returncode == 2 and "the run is still training (" in one_error_line(resumed.stderr)
    assert f"in use by process {proc.pid}" in resumed.stderr
    assert fresh.returncode == 2 and "already holds files" in one_error_line(fresh.stderr)
    assert f"resume={run}" in fresh.stderr


@pytest.mark.slow
def test_failed_resumes_leave_the_run_as_it_was(tiny_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = snapshot(run)
    bad = run_cli("ddpm_lab.train", f"resume={run}", "optimizer.lr=-1", cwd=tmp_path, check=False, timeout=120)
    assert bad.returncode == 2 and "optimizer.lr" in one_error_line(bad.stderr)
    assert snapshot(run) == before  # no record, no log lines: exactly as it was

    # A checkpoint of another model copied into the folder: refused with a message, not a KeyError.
    foreign = read_checkpoint(run / "checkpoints" / "last.ckpt")
    foreign["state_dict"] = {k: v for k, v in foreign["state_dict"].items() if not k.endswith("out.weight")}
    foreign["global_step"] = 99
    torch.save(foreign, run / "checkpoints" / "step_0000099.ckpt")
    other = run_cli("ddpm_lab.train", f"resume={run}", cwd=tmp_path, check=False, timeout=120)
    assert other.returncode == 2 and "do not fit" in one_error_line(other.stderr), other.stderr[-2000:]
    (run / "checkpoints" / "step_0000099.ckpt").unlink()
    assert snapshot(run) == before  # no record of either failed launch is left


@pytest.mark.slow
def test_a_multirun_job_with_a_mistake_fails_alone_and_is_named(image_folder: Path, tmp_path: Path):
    overrides = [o for o in TINY_TRAIN if not o.startswith("trainer.max_steps")]
    proc = run_cli(
        "ddpm_lab.train", "-m", *overrides, "trainer.max_steps=2", "callbacks.sample_grid.every_n_steps=0",
        f"dataset.root={image_folder}", f"paths.output_root={tmp_path}", "optimizer.lr=-1,1e-3",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith("error: job 0 (") and "optimizer.lr" in errors[0]
    assert errors[-1].startswith("error: 1 multirun job(s) failed") and "job 0 (" in errors[-1]
    (sweep,) = (tmp_path / "multirun").iterdir()
    (good,) = sweep.glob("1_*")
    assert read_checkpoint(good / "checkpoints" / "last.ckpt")["global_step"] == 2
