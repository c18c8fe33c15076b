"""Exponential moving average of the weights, on Lightning's own ``WeightAveraging`` callback."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from ddpm_lab.errors import check_number


class EMA(WeightAveraging):
    """Keep θ_ema ← d_t θ_ema + (1 − d_t) θ after every optimizer step, with d_t = min(decay, (1 + t) / (10 + t)).

    The warm-up (``warmup=true``) lets the average follow the fast early changes of the weights instead of
    remembering the random initialisation for ~1/(1 − decay) steps. ``WeightAveraging`` does the rest:
    validation runs on the averaged weights, checkpoints store them as ``state_dict`` (the raw weights go to
    ``current_model_state``) and resuming restores both. Every rank updates from the same all-reduced weights,
    so the average is identical on every rank. ``DiffusionModule.sampling_net`` returns :attr:`averaged_net`.

    Args:
        decay: the target decay; 0.9999 averages over roughly the last 10k steps.
        warmup: ramp the decay up from 0.1 as above (diffusers' ``EMAModel`` schedule).
        device: where the averaged copy lives; the model's device by default (``cpu`` saves GPU memory).
    """

    def __init__(self, decay: float = 0.9999, warmup: bool = True, device: str | None = None) -> None:
        decay = check_number(decay, "callbacks.ema.decay", float, 0, 1)
        # Buffers (the diffusion schedule) are constants: average the parameters only.
        super().__init__(device=device, use_buffers=False, multi_avg_fn=self._average)
        self.decay, self.warmup = decay, warmup
        self._step = 0
        self._swapped = False  # True while validation runs on the averaged weights

    def decay_at(self, step: int) -> float:
        """d_t after optimizer step ``step`` (1-based)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: Any) -> None:
        get_ema_multi_avg_fn(self.decay_at(self._step))(averaged, current, num_averaged)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self._step = trainer.global_step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self._swapped = self._average_model is not None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        self._swapped = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Stopped inside validation (e.g. by SIGTERM): put the raw weights back before anything saves them.
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning copies the average into the module here; the final checkpoint (PreemptionGuard, after this)
        # must still hold the raw weights to continue from, and sampling reads the average from averaged_net.
        pass

    def averaged_net(self, pl_module: pl.LightningModule) -> nn.Module | None:
        """The denoiser holding the averaged weights right now, or None before ``fit`` set the average up."""
        if self._average_model is None:
            return None
        # During validation the weights are swapped: the module itself holds the average then.
        return pl_module.net if self._swapped else self._average_model.module.net


def find_ema(trainer: pl.Trainer | None) -> EMA | None:
    """The trainer's :class:`EMA` callback, if it has one."""
    if trainer is None:
        return None
    return next((cb for cb in trainer.callbacks if isinstance(cb, EMA)), None)
