"""The run folder: where a launch writes, cleaning up after a launch that failed before any work, and
``resume=<run folder>`` (continue a run in its own folder, with its own config, from its newest checkpoint).

Hydra side: ``hydra.run.dir`` comes from the resolver ``resume_run_dir`` (a fresh folder, or the run being
resumed), this launch's Hydra files go to ``<run>/.hydra/resume_<time>/`` on a resume (resolver
``resume_output_subdir``) so the original ones stay, and the config is composed again from the run's own
overrides followed by the ones typed now (``trainer.max_steps=...``).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from ddpm_lab.artifacts.atomic import remove_stale_temp_files
from ddpm_lab.artifacts.checkpoint import newest_checkpoint
from ddpm_lab.errors import CheckpointError, ConfigError, ResumeError, UserError, exit_with

log = logging.getLogger(__name__)

RESUME_PREFIX = "resume_"
_STARTED_AT = time.time()  # before @hydra.main creates this launch's run folder
# A fresh run folder -> its nearest ancestor that existed before Hydra created it (written by the resolver
# below when Hydra resolves hydra.run.dir, read by discard_fresh_run_folder): what a clean-up must not remove.
_existed_before: dict[Path, Path] = {}


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
def _launch_file(path: Path) -> bool:
    """A file a launch writes before its first training step: Hydra's record, the log, TensorBoard's first events."""
    return path.is_dir() or path.suffix in (".yaml", ".log") or path.name.startswith("events.out.tfevents.")


def discard_fresh_run_folder() -> None:
    """After an error that stopped a launch before any work: remove what this launch created, nothing else.

    Hydra writes ``<run>/.hydra/*.yaml`` and ``<run>/<job>.log`` before the task function runs; a data error found
    inside ``trainer.fit`` (the data module's ``setup``) comes after Lightning opened ``tensorboard/`` (first
    events, ``hparams.yaml``) and possibly ``checkpoints/``. A folder is removed only when it holds nothing else,
    no checkpoint, and all of it is younger than this process; a resumed run keeps its folder and loses only this
    launch's ``.hydra/resume_<time>/``.
    """
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    run = Path(hc.runtime.output_dir)
    subdir = run / hc.output_subdir if hc.output_subdir else None
    if subdir is not None and subdir.parent.name == ".hydra" and subdir.name != ".hydra":  # a resume launch
        candidate, allowed = subdir, set()
    else:
        candidate, allowed = run, {".hydra", f"{hc.job.name}.log", "tensorboard", "checkpoints"}
    if not candidate.is_dir() or (allowed and not {p.name for p in candidate.iterdir()} <= allowed):
        return
    files = list(candidate.rglob("*"))
    if all(p.stat().st_mtime >= _STARTED_AT - 1 and _launch_file(p) for p in files):
        shutil.rmtree(candidate, ignore_errors=True)
        _remove_created_parents(candidate.absolute())


def _remove_created_parents(folder: Path) -> None:
    """Remove the now-empty parents (e.g. ``outputs/train``) that Hydra created for a discarded run folder."""
    keep = _existed_before.get(folder)
    parent = folder.parent
    while keep is not None and parent != keep and keep in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


# ------------------------------------------------------------------------------------------------- resolvers
def resume_run_dir(resume: str | None, fresh: str) -> str:
    """Resolver for ``hydra.run.dir``: the run folder being resumed, or a fresh one in a writable place.

    Checked here, before Hydra creates anything.
    """
    if not resume:
        _existed_before.setdefault(Path(fresh).absolute(), writable_folder(fresh))
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
    return str(run)


@functools.cache  # one name per process, however often Hydra resolves it
def resume_output_subdir(resume: str | None) -> str:
    """Resolver for ``hydra.output_subdir``: a resumed launch must not overwrite the run's own ``.hydra`` files."""
    return f".hydra/{RESUME_PREFIX}{datetime.now():%Y-%m-%d_%H-%M-%S}" if resume else ".hydra"


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
    """The overrides a run was started with, then those of each earlier resume of it, in order."""
    hydra_dir = run_dir / ".hydra"
    files = [hydra_dir / "overrides.yaml"]
    files += sorted(p / "overrides.yaml" for p in hydra_dir.glob(f"{RESUME_PREFIX}*") if p.name != skip)
    lists = [list(OmegaConf.load(f)) for f in files if f.is_file()]
    return [o for o in merge_overrides(*lists) if _key(o) != "resume"]


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


def continue_tensorboard(cfg: DictConfig, step: int) -> None:
    """Make TensorBoard loggers hide what the interrupted run logged after ``step``, so the curves join up."""
    for node in (cfg.get("logger") or {}).values():
        if node is not None and str(node.get("_target_", "")).endswith("TensorBoardLogger"):
            with open_dict(node):
                node.purge_step = step
