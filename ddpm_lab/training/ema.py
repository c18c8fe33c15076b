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
        self._lists: tuple | None = None  # (average model, its parameters, the module's, updated before) for update

    def decay_at(self, step: int) -> float:
        """d_t after optimizer step ``step`` (1-based)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: Any) -> None:
        get_ema_multi_avg_fn(self.decay_at(self._step))(averaged, current, num_averaged)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self._step = trainer.global_step
        # As WeightAveraging.on_train_batch_end, with the update of :meth:`update` (no per-step list building).
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self.update(pl_module)
            self._latest_update_step = trainer.global_step

    @torch.no_grad()
    def update(self, pl_module: pl.LightningModule) -> None:
        """θ_ema ← lerp(θ_ema, θ, 1 − d_t) for all parameters at once (one ``_foreach_lerp_``).

        The same arithmetic as ``AveragedModel.update_parameters`` with ``get_ema_multi_avg_fn`` (which also ends
        in ``_foreach_lerp_``), without rebuilding, moving and grouping the parameter lists every step, and without
        reading ``n_averaged`` back from the device (a synchronisation) after the first update of a fit. An
        average kept on another device or dtype (``device=cpu``) takes AveragedModel's own path.
        """
        average = self._average_model
        if self._lists is None or self._lists[0] is not average:
            averaged, current = list(average.module.parameters()), list(pl_module.parameters())
            if any(a.device != c.device or a.dtype != c.dtype for a, c in zip(averaged, current)):
                average.update_parameters(pl_module)
                return
            for a, c in zip(averaged, current):
                if a.stride() != c.stride():  # e.g. channels_last weights: one layout keeps foreach on its fast path
                    a.data = torch.empty_like(c).copy_(a.data)
            self._lists = (average, averaged, current, bool(average.n_averaged > 0))
        _, averaged, current, started = self._lists
        if started:
            torch._foreach_lerp_(averaged, current, 1.0 - self.decay_at(self._step))
        else:
            torch._foreach_copy_(averaged, current)
            self._lists = (*self._lists[:3], True)
        average.n_averaged += 1

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
