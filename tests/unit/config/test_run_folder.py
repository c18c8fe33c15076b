"""Run folders belong to one run: claimed before Hydra writes, locked by one process, and a clean-up removes only
the folders this process made."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_lab.config import run_folder
from ddpm_lab.config.run_folder import LOCK_NAME, claim_fresh_run_folder, lock_run_folder, unlock_run_folder
from ddpm_lab.errors import OutputExistsError, RunFolderBusyError
from helpers import cli_env

HOLD_LOCK = """
import sys, time
from ddpm_lab.config.run_folder import lock_run_folder
lock_run_folder(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def locker(tmp_path: Path):
    """Start a process that holds the lock of a folder; yields (process, folder)."""
    procs = []

    def start(folder: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(folder)], env=cli_env(), stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_folder_holding_anything_is_refused_and_left_alone(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=f"resume={run}"):
        claim_fresh_run_folder(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"] and (run / "notes.txt").read_text() == "mine"


def test_a_fresh_folder_is_created_locked_and_released(tmp_path: Path):
    run = tmp_path / "a" / "b" / "run"
    claim_fresh_run_folder(run)
    try:
        assert (run / LOCK_NAME).read_text().split() == [str(os.getpid()), socket.gethostname()]
        assert [tmp_path / "a", tmp_path / "a" / "b", run] == run_folder._launch.folders[-3:]
    finally:
        unlock_run_folder(run)
    assert not (run / LOCK_NAME).exists()
    run_folder._remove_created_folders()
    assert not (tmp_path / "a").exists()  # the folders this process made, and only those, are gone


def test_clean_up_never_removes_a_folder_someone_else_wrote_into(tmp_path: Path):
    run = tmp_path / "x" / "run"
    claim_fresh_run_folder(run)
    unlock_run_folder(run)
    (tmp_path / "x" / "theirs.txt").write_text("another process")
    run_folder._remove_created_folders()
    assert not run.exists() and (tmp_path / "x" / "theirs.txt").read_text() == "another process"


def test_a_live_lock_refuses_and_a_dead_one_is_taken_over(tmp_path: Path, locker):
    run = tmp_path / "run"
    run.mkdir()
    proc = locker(run)
    with pytest.raises(RunFolderBusyError, match=f"in use by process {proc.pid} on {socket.gethostname()}"):
        lock_run_folder(run)
    with pytest.raises(OutputExistsError):  # a running run's folder is not empty: a fresh launch stops too
        (run / "train.log").write_text("")
        claim_fresh_run_folder(run)
    proc.kill()
    proc.wait()
    assert (run / LOCK_NAME).read_text().split()[0] == str(proc.pid)  # SIGKILL left its lock file behind
    lock_run_folder(run)  # ... which no live process holds: taken over
    try:
        assert (run / LOCK_NAME).read_text().split() == [str(os.getpid()), socket.gethostname()]
    finally:
        unlock_run_folder(run)


def test_without_flock_the_pid_on_this_host_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_folder.fcntl, "flock", no_flock)
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for owner, busy in [
        (f"{os.getppid()} {socket.gethostname()}", True),  # alive, here
        (f"{dead.stdout.strip()} elsewhere.example.org", True),  # another host: cannot be checked
        (f"{dead.stdout.strip()} {socket.gethostname()}", False),  # dead, here: stale
    ]:
        (run / LOCK_NAME).write_text(owner + "\n")
        if busy:
            with pytest.raises(RunFolderBusyError, match=owner.replace(" ", " on ").replace(".", r"\.")):
                lock_run_folder(run)
        else:
            lock_run_folder(run)
            assert (run / LOCK_NAME).read_text().split()[0] == str(os.getpid())
            unlock_run_folder(run)
