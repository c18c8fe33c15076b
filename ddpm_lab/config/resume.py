"""``resume=<run folder>``: continue a run in its own folder, with its own config, from its newest checkpoint.

``hydra.run.dir`` is then the run being resumed (resolver ``resume_run_dir``: checked and locked), this launch's
Hydra files go to ``<run>/.hydra/resume_<time>_<uid>/`` (resolver ``resume_output_subdir``) so the original ones
stay, and the config is composed again from the run's own overrides (and those of earlier resumes that reached
training) followed by the ones typed now (``trainer.max_steps=...``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from ddpm_lab.artifacts.atomic import remove_stale_temp_files
from ddpm_lab.artifacts.checkpoint import is_training_checkpoint, newest_checkpoint, read_checkpoint
from ddpm_lab.artifacts.trained_model import check_fits, net_weights
from ddpm_lab.config.loggers import logger_row
from ddpm_lab.config.overrides import check_known, check_places, read_overrides
from ddpm_lab.config.run_folder import CHECKPOINTS, RESUME_PREFIX, STARTED_NAME
from ddpm_lab.errors import CheckpointError, ResumeError, one_line
from ddpm_lab.training.resume_state import check_resume_state


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


def run_overrides(run_dir: Path, skip: str | None = None, typed: Sequence[str] = ()) -> list[str]:
    """The overrides a run was started with, then those of each earlier resume of it that reached training
    (a ``started`` file beside its record: a launch that failed before training changed nothing), in order.

    They are untrusted input (a run folder may come from anyone): only plain ``key=value`` overrides of keys the
    composed config has (or ``group=option``) are returned, and none that moves where the run writes unless that
    key is ``typed`` now; anything else stops with UnsafeConfigError.
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
    check_places(replayed, sources, typed)
    check_known(replayed, sources, config_name or "train")
    return replayed


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The config of the run in ``cfg.resume``, with the overrides typed now applied on top."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN":
        raise ResumeError("resume= continues one run: drop -m/--multirun and resume each run folder on its own")
    run = Path(hydra_cfg.runtime.output_dir)  # resume_run_dir made the run folder this launch's folder
    now = list(hydra_cfg.overrides.task)
    overrides = merge_overrides(run_overrides(run, skip=Path(hydra_cfg.output_subdir or "").name, typed=now), now)
    resumed = compose(config_name=hydra_cfg.job.config_name, overrides=[o for o in overrides if _key(o) != "resume"])
    with open_dict(resumed):
        resumed.resume = cfg.resume
    if hydra_cfg.output_subdir:  # what this launch really runs, next to Hydra's record of what was typed
        OmegaConf.save(resumed, Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir / "config.yaml")
    return resumed


def resume_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint ``resume=<run_dir>`` continues from: the newest readable one by training step."""
    folder = Path(run_dir) / CHECKPOINTS
    try:
        path = newest_checkpoint(folder)
    except CheckpointError as e:
        raise ResumeError(f"resume={run_dir}: {e}") from e
    remove_stale_temp_files(folder)
    return path


def continue_loggers(cfg: DictConfig, step: int) -> None:
    """Make a resumed run's loggers go on with what the interrupted run logged, and delete none of it: each as its
    row in ``loggers.py`` says (TensorBoard purges after ``step``, CSV writes beside its ``metrics.csv``, MLflow goes
    on in the run's own MLflow run, W&B starts a new W&B run in the same folder)."""
    for node in (cfg.get("logger") or {}).values():
        row = logger_row(node)
        if row is not None and row.resume is not None:
            row.resume(node, step)


def check_resumable(net: nn.Module, ckpt_path: str | os.PathLike, run_dir: str | os.PathLike) -> None:
    """Refuse a checkpoint that ``resume=`` cannot continue: not a training checkpoint, or weights of another
    model than the run's config builds (a file copied in from another run)."""
    try:
        ckpt = read_checkpoint(ckpt_path, mmap=True)
        if not is_training_checkpoint(ckpt):
            raise CheckpointError(
                f"{ckpt_path} is not a training checkpoint (no optimizer or loop state): it cannot be continued; "
                "start a new run from its weights with ckpt_path= instead"
            )
        check_resume_state(ckpt, ckpt_path)
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
