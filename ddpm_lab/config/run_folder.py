"""The run folder: where a launch writes, its lock, and cleaning up after a launch that failed before any work.

One run per folder, one process per run: a fresh launch claims its folder (:func:`claim_fresh_run_folder`, called
by :class:`~ddpm_lab.config.hydra_callbacks.RunFolders` before Hydra creates it or writes ``.hydra/``; refused when
it holds anything); the folder's ``.lock`` (pid, host, an ``flock``) keeps a second process out until the first
exits. Every folder this process creates is recorded, so the clean-up after a failed launch
(:func:`discard_fresh_run_folder`) removes exactly what it made. ``resume=`` (``resume.py``) works in the same
folder again, its Hydra files in ``.hydra/resume_<time>_<uid>/``.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from ddpm_lab.config.loggers import logger_folders
from ddpm_lab.errors import ConfigError, OutputExistsError, RunFolderBusyError, RunFolderError, os_reason

log = logging.getLogger(__name__)

# The names in a run folder besides what the run itself writes (the loggers' folders: see loggers.py).
LOCK_NAME = ".lock"  # "<pid> <host>" of the process that works in a run folder; flock-ed while it runs
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes into output_subdir
RESUME_PREFIX = "resume_"  # .hydra/resume_<time>_<uid>/: the Hydra files of one resume launch
STARTED_NAME = "started"  # in .hydra/resume_<time>/: this resume launch reached training, so replay its overrides
CHECKPOINTS = "checkpoints"  # configs/callbacks/default.yaml's model_checkpoint.dirpath under the run folder
# The logs of the extra processes Lightning's launcher starts on this machine (its Hydra job name for them).
EXTRA_PROCESS_LOGS = "train_ddp_process_*.log"


@dataclass
class _Launch:
    """What this launch created, so that a clean-up removes exactly that and nothing of anyone else's."""

    folders: list[Path] = field(default_factory=list)  # created by this process, outermost first
    locks: dict[Path, int] = field(default_factory=dict)  # run folder -> open, flock-ed lock file descriptor
    log_sizes: dict[Path, int] = field(default_factory=dict)  # a resumed run's log -> its size before this launch
    claimed: set[Path] = field(default_factory=set)  # fresh run folders this launch found empty (or made) and locked


_launch = _Launch()


def make_folders(path: Path) -> Path:
    """Create ``path`` and its missing parents one by one, recording each folder this process created."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:  # another launch made it a moment ago: it is theirs
            continue
        _launch.folders.append(folder)
    return path


def _secondary_rank() -> bool:
    """True in the extra processes of a multi-process run (Lightning's DDP children, SLURM tasks > 0): the run
    folder and its lock belong to rank 0, which started first."""
    return any(int(os.environ.get(k) or 0) > 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def open_lock_file(path: Path) -> int:
    """``path`` opened (created if missing) as a lock file: never through a symbolic link (``O_NOFOLLOW``), never
    blocking on a FIFO (``O_NONBLOCK``), and refused unless it is a plain file with no other name (a hard link), so
    taking a lock can neither truncate nor reveal a file elsewhere. Raises :class:`RunFolderError`."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RunFolderError(
                f"{path} is a symbolic link: a lock file never is (taking it would write where it points); "
                "remove the link"
            ) from None
        raise RunFolderError(f"cannot open the lock file {os_reason(e)}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a plain file"
        raise RunFolderError(f"{path} is {what}: a lock file never is (taking it would write into it); remove it")
    return fd


def lock_run_folder(folder: str | os.PathLike) -> None:
    """Take ``<folder>/.lock`` for this process (pid and host inside, an ``flock`` held until exit).

    A lock whose process is gone (killed, crashed, machine rebooted) holds no ``flock`` any more and is taken
    over with a warning. Raises :class:`RunFolderBusyError` while another process works in the folder, and
    :class:`RunFolderError` for a ``.lock`` that is not a plain file of its own (see :func:`open_lock_file`).
    """
    folder = Path(folder).absolute()
    if folder in _launch.locks or _secondary_rank():
        return
    path = folder / LOCK_NAME
    for _ in range(5):
        fd = open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd)
            os.close(fd)
            raise RunFolderBusyError(f"{folder} is in use by {_described(owner)} (its {LOCK_NAME})") from None
        except OSError:  # a file system without flock (some NFS mounts): trust the pid on this host
            owner = _owner(fd)
            if _owner_alive(owner):
                os.close(fd)
                raise RunFolderBusyError(f"{folder} is in use by {_described(owner)} (its {LOCK_NAME})") from None
        try:
            same = os.lstat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # its previous holder removed it between our open and our flock
            same = False
        if not same:
            os.close(fd)
            continue
        stale = _owner(fd)
        if stale:
            log.warning("taking over the lock of %s left by %s, which is no longer running", folder, _described(stale))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError:  # a full disk: the lock goes again (while still flock-ed, nobody else holds it)
            path.unlink(missing_ok=True)
            os.close(fd)
            raise
        _launch.locks[folder] = fd
        return
    raise RunFolderBusyError(f"{folder}: could not take its lock {path}; try again")


@contextlib.contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Hold the lock file ``path`` (opened as :func:`open_lock_file` does), waiting while another process holds
    it; removed again on exit. For short critical sections, e.g. rewriting a sweep folder's report."""
    while True:
        fd = open_lock_file(path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.lstat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # its previous holder removed it while we waited
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: a waiter sees another inode and opens the new file
        os.close(fd)


def _owner(fd: int) -> tuple[str, str] | None:
    """The ``(pid, host)`` a lock file names, read from its descriptor; None when it names none."""
    words = os.pread(fd, 200, 0).decode(errors="replace").split()
    if len(words) < 2 or not words[0].isdigit():
        return None
    return words[0], words[1][:100]


def _described(owner: tuple[str, str] | None) -> str:
    return "another process" if owner is None else f"process {owner[0]} on {owner[1]}"


def _owner_alive(owner: tuple[str, str] | None) -> bool:
    """Whether the pid in a lock file may still run: True unless it names this host and no such process."""
    if owner is None:
        return False  # empty or garbled: nobody wrote it completely
    pid, host = owner
    if host != socket.gethostname():
        return True  # cannot be checked from here
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, someone else's
        return True
    return True


def unlock_run_folder(folder: str | os.PathLike) -> None:
    """Remove this process's lock of ``folder`` (nothing if it holds none)."""
    folder = Path(folder).absolute()
    fd = _launch.locks.pop(folder, None)
    if fd is None:
        return
    try:
        (folder / LOCK_NAME).unlink(missing_ok=True)  # while still flock-ed: nobody else can hold it now
    finally:
        os.close(fd)


@atexit.register
def release_launch() -> None:
    """What this process's exit does: release every lock it holds and forget what it created (a caller that runs
    several launches in one process, e.g. a test calling ``main()`` again, starts each afresh)."""
    for folder in list(_launch.locks):
        unlock_run_folder(folder)
    _launch.folders.clear()
    _launch.log_sizes.clear()
    _launch.claimed.clear()


def claim_fresh_run_folder(path: str | os.PathLike, job: str = "train") -> None:
    """Make ``path`` this launch's run folder: create it, lock it, and refuse it if it holds anything.

    Raises :class:`OutputExistsError` (for ``job`` train: pointing to ``resume=``) before anything is written.
    """
    path = Path(path).absolute()
    if _secondary_rank():  # rank 0 claimed it
        return
    writable_folder(path)
    make_folders(path)
    if not path.is_dir():
        raise ConfigError(f"cannot use {path} as the run folder: it is a file")
    if any(p.name != LOCK_NAME for p in path.iterdir()):
        raise _exists(path, job)
    lock_run_folder(path)
    if any(p.name != LOCK_NAME for p in path.iterdir()):  # another launch got in between
        unlock_run_folder(path)
        raise _exists(path, job)
    _launch.claimed.add(path)


def _exists(path: Path, job: str) -> OutputExistsError:
    resume = f"continue that run with resume={path}, or " if job == "train" else ""
    keys = "hydra.sweep.dir" if job == "multirun job" else "hydra.run.dir / paths.output_root"
    return OutputExistsError(
        f"{path} already holds files (a run, or something else): nothing was written; "
        f"{resume}choose another folder ({keys})"
    )


def writable_folder(path: str | os.PathLike) -> Path:
    """Raise ConfigError unless ``path`` is, or can be created as, a folder this process may write into.

    Returns its nearest ancestor that exists now (what a later clean-up must not remove).
    """
    path = Path(path).expanduser().absolute()
    existing = path
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as e:  # a name too long, a loop of links, ...
        raise ConfigError(
            f"cannot create the output folder {path}: {e.strerror or e}; choose another paths.output_root"
        ) from None
    if not existing.is_dir():
        raise ConfigError(
            f"cannot create the output folder {path}: {existing} is a file, not a folder; "
            "choose another paths.output_root"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"output folder {existing} is not writable: choose another paths.output_root or fix its permissions"
        )
    return existing


def check_plain_run_folder(run: str | os.PathLike, key: str = "resume") -> None:
    """Refuse a run folder that would make a launch working in it write somewhere else: a symbolic link anywhere
    in it (``checkpoints -> another run's checkpoints``), a file with a second name (a hard link: appending to
    ``train.log`` would append to that other file) or something neither file nor folder (a FIFO blocks the log).
    Raises :class:`RunFolderError` naming the first such path."""
    run = Path(run)
    for root, folders, files in os.walk(run):  # a linked folder is listed, never entered
        for name in sorted(folders + files):
            path = Path(root) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                what = "a symbolic link"
            elif stat.S_ISDIR(info.st_mode):
                continue
            elif not stat.S_ISREG(info.st_mode):
                what = "neither a file nor a folder"
            elif info.st_nlink > 1:
                what = "a hard link (one file with another name elsewhere)"
            else:
                continue
            raise RunFolderError(
                f"{key}={run}: {path} is {what}, which a run folder never holds (working in it would write "
                "elsewhere): remove it, or copy the run without links (cp -rL)"
            )


def remember_log_size(run: str | os.PathLike, job: str) -> None:
    """Before Hydra appends to a resumed run's ``<job>.log``: note its size, so that a launch failing before
    training takes back the lines it logged (:func:`discard_fresh_run_folder`). Only in a run this process locked."""
    run = Path(run).absolute()
    if run in _launch.locks:
        log_file = run / f"{job}.log"
        _launch.log_sizes[log_file] = log_file.stat().st_size if log_file.is_file() else 0


def discard_fresh_run_folder() -> None:
    """After an error that stopped a launch before any work: remove what this launch created, nothing else.

    Hydra writes ``<run>/.hydra/*.yaml`` and ``<run>/<job>.log`` before the task function runs; a data error found
    inside ``trainer.fit`` (the data module's ``setup``) comes after Lightning opened the loggers' folders
    (``tensorboard/``, ``csv/``, ...) and perhaps ``checkpoints/``. In a folder this launch claimed (found empty
    and locked), those are removed unless a checkpoint was saved, with the lock and the folders this process
    created itself (recorded when it made them, now empty); anything else keeps its folder. A resumed run keeps
    its folder and loses only this launch's ``.hydra/resume_<time>/``.
    """
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    run = Path(hc.runtime.output_dir).absolute()
    subdir = run / hc.output_subdir if hc.output_subdir else None
    if subdir is not None and subdir in _launch.folders:  # a resume launch: its own record and log lines only
        _remove_files(subdir, HYDRA_FILES + (STARTED_NAME,))
        _remove_created_folders()
        for log_file, size in _launch.log_sizes.items():
            if log_file.is_file() and log_file.stat().st_size >= size:
                os.truncate(log_file, size)
        return
    if run not in _launch.claimed:
        return  # not claimed by this launch (e.g. a multirun job's folder made by Hydra): leave it
    if any(run.rglob("*.ckpt")):
        return  # it trained far enough to save a checkpoint: that is a run now, keep it whole
    _remove_files(run / ".hydra", HYDRA_FILES)
    _remove_files(run, (f"{hc.job.name}.log",))
    for extra in run.glob(EXTRA_PROCESS_LOGS):  # this launch's other processes (they exit with it)
        extra.unlink(missing_ok=True)
    # What Lightning opened before the data failed: all of it ours, and no checkpoint in it.
    for name in (*logger_folders(), CHECKPOINTS):
        shutil.rmtree(run / name, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty: something else is inside
        (run / ".hydra").rmdir()
    unlock_run_folder(run)
    _launch.claimed.discard(run)
    _remove_created_folders()


def undo_setup() -> None:
    """After a failure while a run folder was being set up (before Hydra wrote into it): release this launch's
    locks and remove the folders it created, each only while empty."""
    for folder in list(_launch.locks):
        unlock_run_folder(folder)
    _launch.claimed.clear()
    _remove_created_folders()


def _remove_files(folder: Path, names: tuple[str, ...]) -> None:
    for name in names:
        (folder / name).unlink(missing_ok=True)


def _remove_created_folders() -> None:
    """Remove the folders this process created (innermost first), each only while it is empty."""
    for folder in reversed(_launch.folders):
        try:
            folder.rmdir()
        except OSError:  # not empty: something not ours is inside, so it and its parents stay
            break
        _launch.folders.remove(folder)
