"""``resume=<run folder>``: continue a run in its own folder, with its own config, from its last checkpoint.

Hydra side: ``hydra.run.dir`` becomes the run folder (resolver ``resume_run_dir``), this launch's Hydra files go
to ``<run>/.hydra/resume_<time>/`` (resolver ``resume_output_subdir``) so the original ones stay, and the config
is composed again from the run's own overrides followed by the ones typed now (``trainer.max_steps=...``).
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime
from pathlib import Path

import torch
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from ddpm_lab.errors import UserError, exit_with

log = logging.getLogger(__name__)

RESUME_PREFIX = "resume_"
# Fresh run folder -> its nearest ancestor that existed before Hydra created it (see config.discard_fresh_run_folder).
EXISTED_BEFORE: dict[Path, Path] = {}


class ResumeError(UserError, ValueError):
    """``resume=`` names something that cannot be resumed; the message says why and what to pass."""


def checkpoint_candidates(run_dir: str | Path) -> list[Path]:
    """The run's ``.ckpt`` files, newest first (``last.ckpt`` first on a tie: a kill can fall between the two saves)."""
    folder = Path(run_dir) / "checkpoints"
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True)
    if not candidates:
        raise ResumeError(f"resume={run_dir}: no checkpoint in {folder} (the run stopped before its first one)")
    return candidates


def last_checkpoint(run_dir: str | Path) -> Path:
    """The newest readable checkpoint of a run; damaged newer ones are skipped with a warning naming them."""
    candidates = checkpoint_candidates(run_dir)
    damaged = []
    for path in candidates:
        try:
            checkpoint_step(path)
        except Exception as e:  # truncated, empty or foreign file: whatever torch.load says, it cannot be resumed
            damaged.append(path.name)
            log.warning("cannot resume from %s (%s): trying the previous checkpoint", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
            continue
        if damaged:
            log.warning("resuming from %s instead of the damaged %s (kept for inspection)", path.name, ", ".join(damaged))
        return path
    raise ResumeError(f"resume={run_dir}: every checkpoint in {Path(run_dir) / 'checkpoints'} is damaged "
                      f"({', '.join(damaged)}): start a new run, or pass a good copy with ckpt_path=")


def resume_run_dir(resume: str | None, fresh: str) -> str:
    """Resolver for ``hydra.run.dir``: the run folder being resumed, or a fresh one in a writable place.

    Checked here, before Hydra creates anything.
    """
    if not resume:
        from ddpm_lab.validate import writable_folder

        EXISTED_BEFORE.setdefault(Path(fresh).absolute(), writable_folder(fresh))
        return fresh
    run = Path(resume).expanduser()
    if not (run / ".hydra" / "overrides.yaml").is_file():
        raise ResumeError(
            f"resume={resume} is not a training run folder (no .hydra/overrides.yaml): pass the folder of "
            "a run, e.g. resume=outputs/train/<run>"
        )
    checkpoint_candidates(run)
    return str(run)


def _exit_on_user_error(resolver):
    """A resolver that reports a UserError as one line and exit status 2.

    Hydra resolves ``hydra.run.dir`` outside the task function and would print an exception it fails to format.
    """
    @functools.wraps(resolver)
    def wrapped(*args):
        try:
            return resolver(*args)
        except UserError as e:
            exit_with(e)

    return wrapped


@functools.cache  # one name per process, however often Hydra resolves it
def resume_output_subdir(resume: str | None) -> str:
    """Resolver for ``hydra.output_subdir``: a resumed launch must not overwrite the run's own ``.hydra`` files."""
    return f".hydra/{RESUME_PREFIX}{datetime.now():%Y-%m-%d_%H-%M-%S}" if resume else ".hydra"


def register_resolvers() -> None:
    for name, fn in (("resume_run_dir", _exit_on_user_error(resume_run_dir)), ("resume_output_subdir", resume_output_subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


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


def checkpoint_step(path: Path) -> int:
    """The ``global_step`` stored in a checkpoint, read without loading its tensors into memory."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def continue_tensorboard(cfg: DictConfig, step: int) -> None:
    """Make TensorBoard loggers hide what the interrupted run logged after ``step``, so the curves join up."""
    for node in (cfg.get("logger") or {}).values():
        if node is not None and str(node.get("_target_", "")).endswith("TensorBoardLogger"):
            with open_dict(node):
                node.purge_step = step
