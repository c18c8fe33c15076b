"""The run folder: where a launch writes, cleaning up after a launch that failed before any work, and
``resume=<run folder>`` (continue a run in its own folder, with its own config, from its newest checkpoint).

Hydra side: ``hydra.run.dir`` comes from the resolver ``resume_run_dir`` (a fresh folder named with a random
``${run_uid:}``, or the run being resumed, checked and locked), this launch's Hydra files go to
``<run>/.hydra/resume_<time>_<uid>/`` on a resume (resolver ``resume_output_subdir``) so the original ones stay,
and the config is composed again from the run's own overrides (and those of earlier resumes that reached
training) followed by the ones typed now (``trainer.max_steps=...``).

One run per folder, one process per run: the Hydra callback :class:`RunFolders` claims a fresh folder in
``on_run_start``, before Hydra creates it or writes ``.hydra/`` (refused when it holds anything); the folder's
``.lock`` (pid, host, an ``flock``) keeps a second process out until the first exits. Every folder this process
creates is recorded, so the clean-up after a failed launch removes exactly what it made.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import logging
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from ddpm_lab.artifacts.atomic import remove_stale_temp_files
from ddpm_lab.artifacts.checkpoint import check_fits, net_weights, newest_checkpoint, read_checkpoint
from ddpm_lab.config.overrides import check_known, read_overrides
from ddpm_lab.errors import (
    EXIT_USER_ERROR,
    CheckpointError,
    ConfigError,
    OutputExistsError,
    ResumeError,
    RunFolderBusyError,
    UserError,
    exit_with,
    one_line,
)

log = logging.getLogger(__name__)

RESUME_PREFIX = "resume_"
LOCK_NAME = ".lock"  # "<pid> <host>" of the process that works in a run folder; flock-ed while it runs
STARTED_NAME = "started"  # in .hydra/resume_<time>/: this resume launch reached training, so replay its overrides
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes into output_subdir
# What a training launch opens before its first step (the loggers' folders of configs/logger/*.yaml, checkpoints).
LIGHTNING_FOLDERS = ("tensorboard", "csv", "mlruns", "wandb", "checkpoints")


@dataclass
class _Launch:
    """What this launch created, so that a clean-up removes exactly that and nothing of anyone else's."""

    folders: list[Path] = field(default_factory=list)  # created by this process, outermost first
    locks: dict[Path, int] = field(default_factory=dict)  # run folder -> open, flock-ed lock file descriptor
    log_sizes: dict[Path, int] = field(default_factory=dict)  # a resumed run's log -> its size before this launch
    claimed: set[Path] = field(default_factory=set)  # fresh run folders this launch found empty (or made) and locked


_launch = _Launch()


def _mkdirs(path: Path) -> Path:
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


def lock_run_folder(folder: str | os.PathLike) -> None:
    """Take ``<folder>/.lock`` for this process (pid and host inside, an ``flock`` held until exit).

    A lock whose process is gone (killed, crashed, machine rebooted) holds no ``flock`` any more and is taken
    over with a warning. Raises :class:`RunFolderBusyError` while another process works in the folder.
    """
    folder = Path(folder).absolute()
    if folder in _launch.locks or _secondary_rank():
        return
    path = folder / LOCK_NAME
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderBusyError(f"{folder} is in use by {_lock_owner(path)} (its {LOCK_NAME})") from None
        except OSError:  # a file system without flock (some NFS mounts): trust the pid on this host
            if _owner_alive(path):
                os.close(fd)
                raise RunFolderBusyError(f"{folder} is in use by {_lock_owner(path)} (its {LOCK_NAME})") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # its previous holder removed it between our open and our flock
            same = False
        if not same:
            os.close(fd)
            continue
        stale = os.read(fd, 200).decode(errors="replace").strip()
        if stale:
            log.warning("taking over the lock of %s left by %s, which is no longer running", folder, stale)
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        _launch.locks[folder] = fd
        return
    raise RunFolderBusyError(f"{folder}: could not take its lock {path}; try again")


def _owner_alive(path: Path) -> bool:
    """Whether the pid in a lock file may still run: True unless it names this host and no such process."""
    try:
        pid, host = path.read_text().split()[:2]
        if host != socket.gethostname():
            return True  # cannot be checked from here
        os.kill(int(pid), 0)
    except (ValueError, FileNotFoundError):
        return False  # empty or garbled: nobody wrote it completely
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, someone else's
        return True
    return True


def _lock_owner(path: Path) -> str:
    try:
        pid, host = path.read_text().split()[:2]
        return f"process {pid} on {host}"
    except (OSError, ValueError):
        return "another process"


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
def _unlock_all() -> None:
    for folder in list(_launch.locks):
        unlock_run_folder(folder)


def claim_fresh_run_folder(path: str | os.PathLike, job: str = "train") -> None:
    """Make ``path`` this launch's run folder: create it, lock it, and refuse it if it holds anything.

    Raises :class:`OutputExistsError` (for ``job`` train: pointing to ``resume=``) before anything is written.
    """
    path = Path(path).absolute()
    if _secondary_rank():  # rank 0 claimed it
        return
    writable_folder(path)
    _mkdirs(path)
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
    return OutputExistsError(
        f"{path} already holds files (a run, or something else): nothing was written; "
        f"{resume}choose another folder (hydra.run.dir / paths.output_root)"
    )


def writable_folder(path: str | os.PathLike) -> Path:
    """Raise ConfigError unless ``path`` is, or can be created as, a folder this process may write into.

    Returns its nearest ancestor that exists now (what a later clean-up must not remove).
    """
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
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


# ---------------------------------------------------------------------------------------- fresh run folders
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
    for name in LIGHTNING_FOLDERS:  # what Lightning opened before the data failed: all of it ours, no checkpoint
        shutil.rmtree(run / name, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty: something else is inside
        (run / ".hydra").rmdir()
    unlock_run_folder(run)
    _launch.claimed.discard(run)
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


# ------------------------------------------------------------------------------------------------- resolvers
@functools.cache  # checked and locked once per process, however often Hydra resolves it
def resume_run_dir(resume: str | None, fresh: str) -> str:
    """Resolver for ``hydra.run.dir``: the run folder being resumed (checked and locked for this process before
    Hydra writes anything), or a fresh one (claimed by :class:`RunFolders` before Hydra creates it)."""
    if not resume:
        return fresh
    run = Path(resume).expanduser()
    if not (run / ".hydra" / "overrides.yaml").is_file():
        raise ResumeError(
            f"resume={resume} is not a training run folder (no .hydra/overrides.yaml): pass the folder of "
            "a run, e.g. resume=outputs/train/<run>"
        )
    if not any((run / "checkpoints").glob("*.ckpt")):
        raise ResumeError(
            f"resume={resume}: no checkpoint in {run / 'checkpoints'} (the run stopped before its first one)"
        )
    try:
        lock_run_folder(run)
    except RunFolderBusyError as e:
        raise ResumeError(
            f"resume={resume}: the run is still training ({e}): wait until it has stopped, then resume it"
        ) from None
    return str(run)


@functools.cache  # one name per process, however often Hydra resolves it
def run_uid() -> str:
    """Resolver ``${run_uid:}``: a short random suffix that keeps run folder names unique within one second."""
    return secrets.token_hex(3)


@functools.cache  # one folder per process, however often Hydra resolves it
def resume_output_subdir(resume: str | None) -> str:
    """Resolver for ``hydra.output_subdir``: a resumed launch must not overwrite the run's own ``.hydra`` files.

    The folder ``<run>/.hydra/resume_<time>_<uid>`` is created here (recorded as this launch's own, for clean-up).
    """
    if not resume:
        return ".hydra"
    name = f".hydra/{RESUME_PREFIX}{datetime.now():%Y-%m-%d_%H-%M-%S}_{run_uid()}"
    _mkdirs(Path(resume).expanduser().absolute() / name)
    return name


def exit_on_user_error(resolver: Callable[..., Any]) -> Callable[..., Any]:
    """A resolver that reports a UserError as one line and exit status 2.

    Hydra resolves ``hydra.run.dir`` outside the task function and would print an exception it fails to format.
    """

    @functools.wraps(resolver)
    def wrapped(*args: Any) -> Any:
        try:
            return resolver(*args)
        except UserError as e:
            exit_with(e)

    return wrapped


# ---------------------------------------------------------------------------------------------------- resume
def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*lists: list[str]) -> list[str]:
    """Concatenate override lists, a later ``key=value`` replacing an earlier one for the same key."""
    merged: dict[str, str] = {}
    for override in (o for lst in lists for o in lst):
        key = _key(override)
        earlier = merged.pop(key, None)
        if earlier is not None and earlier.startswith("+") and not override.startswith(("+", "~")):
            override = "+" + override  # the key was added by the run's own overrides: keep adding it
        merged[key] = override
    return list(merged.values())


def run_overrides(run_dir: Path, skip: str | None = None) -> list[str]:
    """The overrides a run was started with, then those of each earlier resume of it that reached training
    (a ``started`` file beside its record: a launch that failed before training changed nothing), in order.

    They are untrusted input (a run folder may come from anyone): only plain ``key=value`` overrides of keys the
    composed config has (or ``group=option``) are returned; anything else stops with UnsafeConfigError.
    """
    hydra_dir = run_dir / ".hydra"
    files = [hydra_dir / "overrides.yaml"]
    files += sorted(
        p / "overrides.yaml"
        for p in hydra_dir.glob(f"{RESUME_PREFIX}*")
        if p.name != skip and (p / STARTED_NAME).is_file()
    )
    lists = [(f, read_overrides(f)) for f in files if f.is_file()]
    sources = {o: f for f, lst in lists for o in lst}
    replayed = [o for o in merge_overrides(*(lst for _, lst in lists)) if _key(o) != "resume"]
    config_name = HydraConfig.get().job.config_name if HydraConfig.initialized() else "train"
    check_known(replayed, sources, config_name or "train")
    return replayed


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The config of the run in ``cfg.resume``, with the overrides typed now applied on top."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN":
        raise ResumeError("resume= continues one run: drop -m/--multirun and resume each run folder on its own")
    run = Path(hydra_cfg.runtime.output_dir)  # resume_run_dir made the run folder this launch's folder
    now = list(hydra_cfg.overrides.task)
    overrides = merge_overrides(run_overrides(run, skip=Path(hydra_cfg.output_subdir or "").name), now)
    resumed = compose(config_name=hydra_cfg.job.config_name, overrides=[o for o in overrides if _key(o) != "resume"])
    with open_dict(resumed):
        resumed.resume = cfg.resume
    if hydra_cfg.output_subdir:  # what this launch really runs, next to Hydra's record of what was typed
        OmegaConf.save(resumed, Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir / "config.yaml")
    return resumed


def resume_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint ``resume=<run_dir>`` continues from: the newest readable one by training step."""
    folder = Path(run_dir) / "checkpoints"
    try:
        path = newest_checkpoint(folder)
    except CheckpointError as e:
        raise ResumeError(f"resume={run_dir}: {e}") from e
    remove_stale_temp_files(folder)
    return path


def _logger_nodes(cfg: DictConfig, class_name: str) -> list[DictConfig]:
    return [
        node
        for node in (cfg.get("logger") or {}).values()
        if node is not None and str(node.get("_target_", "")).rsplit(".", 1)[-1] == class_name
    ]


def _only_mlflow_run(store: Path) -> str | None:
    """The id of the single run in a local MLflow file store (``<store>/<experiment>/<run>/meta.yaml``), else None."""
    runs = [p.parent.name for p in store.glob("*/*/meta.yaml") if p.parent.parent.name not in (".trash", "models")]
    return runs[0] if len(runs) == 1 else None


def continue_loggers(cfg: DictConfig, step: int) -> None:
    """Make a resumed run's loggers go on with what the interrupted run logged, and delete none of it.

    - TensorBoard hides what was logged after ``step`` (``purge_step``), so the curves join up;
    - CSV writes a new ``csv/resume_<k>/metrics.csv`` (Lightning's CSV logger deletes a ``metrics.csv`` it finds);
    - MLflow logs into the run's own MLflow run when its file store holds exactly one;
    - W&B starts a new W&B run (in the same ``wandb/`` folder).
    """
    for node in _logger_nodes(cfg, "TensorBoardLogger"):
        with open_dict(node):
            node.purge_step = step
    for node in _logger_nodes(cfg, "CSVLogger"):
        folder = Path(node.save_dir) / node.name
        k = next(k for k in range(1, 10_000) if not (folder / f"resume_{k}").exists())
        with open_dict(node):
            node.version = f"resume_{k}"
    for node in _logger_nodes(cfg, "MLFlowFileLogger") + _logger_nodes(cfg, "MLFlowLogger"):
        uri = str(node.get("tracking_uri") or "")
        run_id = _only_mlflow_run(Path(uri.removeprefix("file:"))) if uri.startswith("file:") else None
        if run_id is not None and not node.get("run_id"):
            with open_dict(node):
                node.run_id = run_id


def check_resumable(net: nn.Module, ckpt_path: str | os.PathLike, run_dir: str | os.PathLike) -> None:
    """Refuse a checkpoint that ``resume=`` cannot continue: not a training checkpoint, or weights of another
    model than the run's config builds (a file copied in from another run)."""
    try:
        ckpt = read_checkpoint(ckpt_path, mmap=True)
        if not isinstance(ckpt.get("optimizer_states"), list) or not isinstance(ckpt.get("loops"), dict):
            raise CheckpointError(
                f"{ckpt_path} is not a training checkpoint (no optimizer or loop state): it cannot be continued; "
                "start a new run from its weights with ckpt_path= instead"
            )
        for weights in ("raw", "auto"):  # the raw weights and, with EMA, the average in state_dict
            check_fits(net, net_weights(ckpt, weights, ckpt_path), ckpt_path)
    except CheckpointError as e:
        raise ResumeError(f"resume={run_dir}: {one_line(e)}; remove that file or pass its own run folder") from None


class RecordResumeStart(pl.Callback):
    """Mark this resume launch's ``.hydra/resume_<time>/`` once training starts: only then do later resumes
    replay its overrides (a launch that failed before training leaves the run as it was)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and HydraConfig.initialized() and HydraConfig.get().output_subdir:
            hc = HydraConfig.get()
            record = Path(hc.runtime.output_dir) / hc.output_subdir
            if record.parent.name == ".hydra" and record.is_dir():
                (record / STARTED_NAME).write_text(f"{trainer.global_step}\n")


# -------------------------------------------------------------------------------------------------- multirun
_failed_jobs: list[str] = []


def multirun_job_failed(error: UserError) -> None:
    """Report a multirun job's mistake as one line naming the job, and remember it for :class:`RunFolders`;
    the sweep goes on with its other jobs."""
    hc = HydraConfig.get()
    job = f"job {hc.job.num} ({hc.job.override_dirname or 'no overrides'})"
    print(f"error: {job}: {one_line(error)}", file=sys.stderr, flush=True)
    _failed_jobs.append(job)


class RunFolders(Callback):
    """Hydra callback (``hydra.callbacks.run_folders``).

    * ``on_run_start`` (before Hydra creates the run folder or writes ``.hydra/``): a fresh launch claims its
      folder, default or given as ``hydra.run.dir``: created and locked for this process, refused (one line,
      exit status 2, nothing written) when it holds anything.
    * ``on_multirun_end``: name the jobs that failed with a mistake, and exit with status 2.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exceptions into warnings and goes on: every failure here must exit instead.
        try:
            HydraConfig.instance().set_config(config)  # as run_job does next: ${hydra:job.override_dirname}
            run = str(config.hydra.run.dir)  # resume=: resume_run_dir checks and locks the run as this resolves
            if not OmegaConf.select(config, "resume"):
                claim_fresh_run_folder(run, str(config.hydra.job.name))
            elif Path(run).absolute() in _launch.locks:  # a failed resume takes back the lines it logged
                log_file = Path(run).absolute() / f"{config.hydra.job.name}.log"
                _launch.log_sizes[log_file] = log_file.stat().st_size if log_file.is_file() else 0
        except UserError as e:
            exit_with(e)
        except Exception as e:
            raise SystemExit(f"error: cannot set up the run folder: {one_line(e)}") from e

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _failed_jobs:
            print(
                f"error: {len(_failed_jobs)} multirun job(s) failed (messages above): {', '.join(_failed_jobs)}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(EXIT_USER_ERROR)
