"""Run folders belong to one run: claimed before Hydra writes, locked by one process, and a clean-up removes only
the folders this process made."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ddpm_lab.config import run_folder
from ddpm_lab.config.run_folder import LOCK_NAME, claim_fresh_run_folder, lock_run_folder, unlock_run_folder
from ddpm_lab.errors import ConfigError, OutputExistsError, RunFolderBusyError, RunFolderError
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


# ------------------------------------------------------------------ a run folder never makes us write outside it
@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "folder"])
def test_a_lock_that_is_not_a_plain_file_of_its_own_is_refused_and_what_it_names_is_untouched(tmp_path, kind):
    """A ``.lock`` that is a symbolic link or a hard link would make taking the lock truncate the file it names
    (and print its first line); a FIFO would block the launch; a folder cannot be one."""
    outside = tmp_path / "outside.txt"
    outside.write_text("12345 secret-first-line\nsecond\n")
    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK_NAME
    {
        "symlink": lambda: lock.symlink_to(outside),
        "hardlink": lambda: os.link(outside, lock),
        "fifo": lambda: os.mkfifo(lock),
        "folder": lambda: lock.mkdir(),
    }[kind]()
    with pytest.raises(RunFolderError) as refused:
        claim_fresh_run_folder(run)  # a folder holding only a .lock counts as empty: the lock itself is the check
    message = str(refused.value)
    assert str(lock) in message and "secret" not in message and "\n" not in message
    assert outside.read_text() == "12345 secret-first-line\nsecond\n"
    assert run not in run_folder._launch.locks


@pytest.mark.parametrize(
    ("make", "culprit", "what"),
    [
        (lambda run, other: (run / "checkpoints").symlink_to(other), "checkpoints", "a symbolic link"),
        (lambda run, other: (run / "checkpoints" / "step_9.ckpt").symlink_to(other / "x"), "step_9", "a symbolic link"),
        (lambda run, other: os.link(other / "x", run / "train.log"), "train.log", "a hard link"),
        (lambda run, other: os.mkfifo(run / "tensorboard"), "tensorboard", "neither a file nor a folder"),
    ],
    ids=["linked-folder", "linked-file", "hard-link", "fifo"],
)
def test_resume_refuses_a_run_folder_holding_links(tmp_path: Path, make, culprit: str, what: str):
    run, other = tmp_path / "run", tmp_path / "other_run"
    (run / "checkpoints").mkdir(parents=True)
    other.mkdir()
    (other / "x").write_bytes(b"another run's file")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    run_folder.check_plain_run_folder(run)  # a plain run folder passes
    if culprit == "checkpoints":
        shutil.rmtree(run / "checkpoints")
    make(run, other)
    with pytest.raises(RunFolderError, match=f"resume={run}: .*{culprit}.* is {what}"):
        run_folder.check_plain_run_folder(run)
    assert (other / "x").read_bytes() == b"another run's file"


def test_a_name_too_long_is_one_line_not_an_os_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="File name too long; choose another paths.output_root"):
        run_folder.writable_folder(tmp_path / ("x" * 300) / "run")


def test_a_waiting_lock_serialises_two_writers_and_leaves_nothing(tmp_path: Path):
    """``waiting_lock`` (a sweep's report): a second holder waits until the first is done; the file goes again."""
    order = []

    def hold(name: str) -> None:
        with run_folder.waiting_lock(tmp_path / ".sweep.lock"):
            order.append(f"{name} in")
            time.sleep(0.3)
            order.append(f"{name} out")

    first = threading.Thread(target=hold, args=("a",))
    first.start()
    while not order:
        time.sleep(0.01)
    hold("b")
    first.join()
    assert order == ["a in", "a out", "b in", "b out"] and not list(tmp_path.iterdir())
