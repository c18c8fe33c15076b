"""Training speed in every run: images/s, step time, the share of a step spent waiting for data, and MFU."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.throughput import get_available_flops

from ddpm_lab.models.flops import train_flops_per_image

log = logging.getLogger(__name__)

# Lightning precision -> the dtype the matrix products run in (what the card's peak is quoted for).
COMPUTE_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16}
# Lightning's table misses "NVIDIA H200" and quotes H200 with sparsity; its dense peaks are the H100 SXM's.
H200_DENSE = {torch.float32: 66.9e12, "tfloat32": 494.7e12, torch.bfloat16: 989.4e12, torch.float16: 989.4e12}


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak FLOP/s for ``precision`` (Lightning's table), or None where it is not known (CPUs).

    Mixed precision runs the matrix products in bf16/fp16; 32-true is quoted at the TF32 peak while cuDNN may use
    TF32 for convolutions (PyTorch's default), else at the float32 peak."""
    if device.type != "cuda":
        return None
    dtype: torch.dtype | str = COMPUTE_DTYPES.get(str(precision), torch.float32)
    if dtype is torch.float32 and torch.backends.cudnn.allow_tf32:
        dtype = "tfloat32"  # a U-Net's work is convolutions, which cuDNN runs in TF32 by default
    if "h200" in torch.cuda.get_device_name(device).lower():
        return H200_DENSE[dtype]
    flops = get_available_flops(device, dtype)
    return float(flops) if flops else None


class Throughput(pl.Callback):
    """Logs ``speed/images_per_s`` (also in the progress bar), ``speed/step_time_s``, ``speed/data_wait_share``
    and, where the device's peak is known, ``speed/mfu`` (model FLOPs utilisation, Chowdhery et al., 2022).

    Host clocks only (``time.perf_counter``), read at batch start and end: the device is synchronised on
    logging steps alone (Lightning's ``log_every_n_steps``), so the numbers cover the whole window since the last
    log and other steps pay nothing. The data wait is the host time between one step's end and the next
    one's start (fetching, transfer, ``on_after_batch_transfer``). FLOPs per image are counted once, at the first
    batch (:func:`ddpm_lab.models.flops.train_flops_per_image`: 3 × forward). The run's last log line states the
    averages over all steps after the first (which includes compilation and warm-up).
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops_per_image: float | None = None
        self.peak: float | None = None
        self._window = self._new_window(None)
        self._first: dict[str, float] | None = None  # the first logged window: compilation and warm-up
        self._total = self._new_window(0.0)  # every later logged window
        self._last_end: float | None = None
        self._validation_start = 0.0

    @staticmethod
    def _new_window(start: float | None) -> dict[str, Any]:
        return {"images": 0, "steps": 0, "wait": 0.0, "start": start, "seconds": 0.0}

    @staticmethod
    def _sync(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        now = time.perf_counter()
        if self.flops_per_image is None:
            images = batch[0]
            self.flops_per_image = train_flops_per_image(pl_module.net, tuple(images.shape[1:]))
            self.peak = peak_flops(pl_module.device, trainer.precision)
            if self.peak:
                self.peak *= trainer.world_size  # every device's peak
            now = time.perf_counter()  # counting is start-up work, not training
        if self._window["start"] is None:
            self._window["start"] = now
        elif self._last_end is not None:
            self._window["wait"] += now - self._last_end

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx):
        self._window["images"] += int(batch[0].shape[0]) * trainer.world_size
        self._window["steps"] += 1
        self._last_end = time.perf_counter()
        if trainer._logger_connector.should_update_logs:
            self._log_window(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation runs between two training steps: keep it out of both the step time and the data wait.
        pause = time.perf_counter() - self._validation_start
        if self._window["start"] is not None:
            self._window["start"] += pause
        if self._last_end is not None:
            self._last_end += pause

    def _log_window(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(pl_module)  # the device's queued work belongs to this window
        now = time.perf_counter()
        window = self._window
        window["seconds"] = now - window["start"]
        self._window, self._last_end = self._new_window(now), now
        if self._first is None:
            self._first = window
        else:
            for key in ("images", "steps", "wait", "seconds"):
                self._total[key] += window[key]
        if window["seconds"] <= 0:
            return
        rate = window["images"] / window["seconds"]
        metrics = {
            "speed/step_time_s": window["seconds"] / window["steps"],
            "speed/data_wait_share": window["wait"] / window["seconds"],
        }
        if self.peak and self.flops_per_image:
            metrics["speed/mfu"] = rate * self.flops_per_image / self.peak
        pl_module.log("speed/images_per_s", rate, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)

    def average(self) -> dict[str, float]:
        """images/s, step time, data-wait share over the logged windows after the first (all steps if fewer)."""
        total = self._total if self._total["steps"] else (self._first or self._total)
        total = dict(total)
        if self._window["start"] is not None and self._window["steps"]:  # steps since the last log
            total = {k: total[k] + self._window[k] for k in ("images", "steps", "wait")} | {
                "seconds": total["seconds"] + time.perf_counter() - self._window["start"]
            }
        if not total["steps"] or total["seconds"] <= 0:
            return {}
        average = {
            "images_per_s": total["images"] / total["seconds"],
            "step_time_s": total["seconds"] / total["steps"],
            "data_wait_share": total["wait"] / total["seconds"],
            "steps": total["steps"],
        }
        if self.peak and self.flops_per_image:
            average["mfu"] = average["images_per_s"] * self.flops_per_image / self.peak
        return average

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return
        self._sync(pl_module)
        average = self.average()
        if not average:
            return
        mfu = f", MFU {100 * average['mfu']:.1f}%" if "mfu" in average else ""
        log.info(
            "throughput: %.1f images/s on average over %d steps (%.1f ms a step, %.1f%% of it waiting for data%s; "
            "%.2f GFLOP per training image)",
            average["images_per_s"],
            average["steps"],
            1000 * average["step_time_s"],
            100 * average["data_wait_share"],
            mfu,
            (self.flops_per_image or 0) / 1e9,
        )
