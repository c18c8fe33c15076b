"""The start-up summary: what a run is about to do (data, model size and FLOPs, batch, steps, checkpoint disk),
logged once before the first step, and an estimate of its total time after the first few steps."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from ddpm_lab.errors import check_number
from ddpm_lab.models.flops import count_parameters, forward_flops_per_image, train_flops_per_image
from ddpm_lab.training.ema import find_ema
from ddpm_lab.training.media import log_text
from ddpm_lab.training.posthoc_ema import find_posthoc_ema

log = logging.getLogger(__name__)


def human_bytes(n: float) -> str:
    """``1.5 GB``, ``26 MB``: decimal units, as disks are sold and ``df -H`` shows them."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def optimizer_slots(optimizer: torch.optim.Optimizer | None) -> int:
    """Tensors of state per parameter the optimizer will keep: Adam(W) two moments, SGD momentum one."""
    if optimizer is None:
        return 0
    defaults = optimizer.defaults
    if "betas" in defaults:
        return 2 + int(bool(defaults.get("amsgrad")))
    return int(bool(defaults.get("momentum")))


def checkpoint_bytes(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """The size of one training checkpoint, from the tensors it stores: the module's weights, the raw weights
    beside the average when an EMA runs, the post-hoc EMA's averages, and the optimizer's per-parameter state
    (file overhead adds a few %)."""
    weights = sum(t.numel() * t.element_size() for t in pl_module.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in pl_module.parameters() if p.requires_grad)
    copies = 2 if find_ema(trainer) is not None else 1
    optimizer = trainer.optimizers[0] if trainer.optimizers else None
    posthoc = find_posthoc_ema(trainer)
    averages = posthoc.tensor_bytes(pl_module) if posthoc is not None else 0
    return copies * weights + averages + optimizer_slots(optimizer) * params


def snapshot_plan(trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
    """One line: the post-hoc EMA snapshots this run will add (all kept), or None without post-hoc EMA."""
    posthoc = find_posthoc_ema(trainer)
    if posthoc is None:
        return None
    size = posthoc.tensor_bytes(pl_module)
    every = posthoc.every_n_steps
    lengths = ", ".join(f"{s:g}" for s in posthoc.sigma_rels)
    head = f"sigma_rel {lengths}, a snapshot every {every} steps into {posthoc.folder}"
    if trainer.max_steps < 0:
        return f"{head}: {human_bytes(size)} each, all kept (no bound without trainer.max_steps)"
    count = trainer.max_steps // every - trainer.global_step // every
    return f"{head}: {count} x {human_bytes(size)} = {human_bytes(count * size)} more, all kept (each one is needed)"


def files_kept(callback: ModelCheckpoint, steps: int | None) -> int | None:
    """How many files one ``ModelCheckpoint`` leaves at most over ``steps`` more optimizer steps (None: no bound)."""
    every = callback._every_n_train_steps
    saves = None if steps is None else (steps // every if every else 0)
    if callback.monitor not in (None, "step"):  # the best by a metric: at most save_top_k
        saves = callback.save_top_k if saves is None else min(saves, callback.save_top_k)
    elif callback.save_top_k >= 0:
        saves = callback.save_top_k if saves is None else min(saves, callback.save_top_k)
    if saves is None:
        return None
    return max(0, saves) + int(bool(callback.save_last))


def checkpoint_plan(trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
    """One line: how many checkpoint files this run keeps, how big they are, and what is already in the folder."""
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    if not callbacks:
        return "none (no ModelCheckpoint callback)"
    steps = trainer.max_steps - trainer.global_step if trainer.max_steps >= 0 else None
    counts = [files_kept(c, steps) for c in callbacks]
    size = checkpoint_bytes(trainer, pl_module)
    folders = {Path(c.dirpath) for c in callbacks if c.dirpath}
    there = sum(p.stat().st_size for folder in folders if folder.is_dir() for p in folder.glob("*.ckpt"))
    kept = ", ".join(
        f"every {c._every_n_train_steps} steps keeping {'all' if c.save_top_k < 0 else c.save_top_k}"
        + (" + last.ckpt" if c.save_last else "")
        + (f" (best by {c.monitor})" if c.monitor not in (None, "step") else "")
        for c in callbacks
    )
    if any(n is None for n in counts):
        total = f"{human_bytes(size)} per file, no bound (save_top_k=-1 without trainer.max_steps)"
    else:
        total = f"at most {sum(counts)} x {human_bytes(size)} = {human_bytes(sum(counts) * size)}"
    already = f" (+ {human_bytes(there)} already in the folder)" if there else ""
    return f"{kept}: {total}{already}"


def data_line(datamodule: object) -> str:
    name = getattr(datamodule, "name", type(datamodule).__name__)
    train, val = getattr(datamodule, "train_images", None), getattr(datamodule, "val_images", None)
    if train is None:
        return str(name)
    shape = "x".join(str(s) for s in train.shape[1:])
    return f"{name}: {len(train):,} train / {0 if val is None else len(val):,} val images of {shape}"


class StartupSummary(pl.Callback):
    """Logs the run's plan before its first step (to the log and as ``summary/startup`` text to every logger that
    takes text: TensorBoard, W&B, MLflow), then, after ``timed_steps`` steps measured from ``skip_steps`` on, the
    estimated total time.

    Args:
        skip_steps: steps left out of the timing (the first ones allocate memory, compile, warm caches).
        timed_steps: steps timed for the estimate.
    """

    def __init__(self, skip_steps: int = 5, timed_steps: int = 20) -> None:
        self.skip_steps = check_number(skip_steps, "callbacks.startup_summary.skip_steps", int, low=0)
        self.timed_steps = check_number(timed_steps, "callbacks.startup_summary.timed_steps", int, low=1)
        self.text: str | None = None
        self.estimate: str | None = None
        self._start_step = 0
        self._t0: float | None = None

    @rank_zero_only
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_step = trainer.global_step
        self.text = self.summary(trainer, pl_module)
        log.info("run summary\n%s", self.text)
        log_text(trainer, "summary/startup", self.text, 0)

    def summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        datamodule = trainer.datamodule
        net = getattr(pl_module, "net", pl_module)
        lines = [f"data:        {data_line(datamodule)}"]
        train = getattr(datamodule, "train_images", None)
        if train is not None:
            shape = tuple(train.shape[1:])
            forward, step = forward_flops_per_image(net, shape), train_flops_per_image(net, shape)
            flops = f", {forward / 1e9:.3g} GFLOPs per image forward ({step / 1e9:.3g} per training image)"
        else:
            flops = ""
        lines.append(f"model:       {type(net).__name__}, {count_parameters(net) / 1e6:.3g}M parameters{flops}")
        per_device = getattr(datamodule, "per_device_batch_size", lambda: None)()
        accumulate, devices = trainer.accumulate_grad_batches, trainer.world_size
        if per_device is not None:
            effective = per_device * devices * accumulate
            lines.append(
                f"batch:       {effective} images per optimizer step = {per_device} per device x {devices} "
                f"device(s) x {accumulate} accumulated"
            )
        else:
            effective = None
        lines.append(f"steps:       {self._steps_line(trainer, pl_module, effective, train)}")
        lines.append(f"checkpoints: {checkpoint_plan(trainer, pl_module)}")
        snapshots = snapshot_plan(trainer, pl_module)
        if snapshots is not None:
            lines.append(f"post-hoc EMA: {snapshots}")
        lines.append(f"time:        estimated after step {self._start_step + self.skip_steps + self.timed_steps}")
        return "\n".join(lines)

    def _steps_line(self, trainer: pl.Trainer, pl_module: pl.LightningModule, effective, train) -> str:
        end = trainer.max_steps if trainer.max_steps >= 0 else None
        line = f"{self._start_step:,} -> {'no limit' if end is None else f'{end:,}'}"
        if end is not None and effective and train is not None and len(train):
            line += f" ({(end - self._start_step) * effective / len(train):.3g} epochs)"
        factor = getattr(pl_module, "lr_factor", None)
        if factor is not None:
            warmup = getattr(factor, "warmup_steps", 0)
            line += f", lr warm-up {warmup:,} steps then {type(factor).__name__}"
            if end is not None and warmup >= end:
                line += " (the warm-up outlasts the run: the lr never reaches optimizer.lr; lower warmup_steps)"
        return line

    @rank_zero_only
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, idx) -> None:
        if self.estimate is not None or trainer.max_steps < 0:
            return
        done = trainer.global_step - self._start_step
        if self._t0 is None and done >= self.skip_steps:
            self._t0, self._t0_done = time.perf_counter(), done
        elif self._t0 is not None and done - self._t0_done >= self.timed_steps:
            per_step = (time.perf_counter() - self._t0) / (done - self._t0_done)
            left = trainer.max_steps - trainer.global_step
            self.estimate = (
                f"{per_step:.3g} s per step (steps {self._start_step + self._t0_done}-{trainer.global_step}): "
                f"~{human_time(per_step * left)} for the {left:,} steps left, ~{human_time(per_step * (left + done))} "
                "in all (validation, grids and checkpoints come on top)"
            )
            log.info("time estimate: %s", self.estimate)
            log_text(trainer, "summary/time_estimate", self.estimate, trainer.global_step)
