"""A test-only callback (loaded by ``_target_`` in test runs): stop training at a chosen point, as a user or the
cluster would, and record every training batch's loss."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch


class StopAt(pl.Callback):
    """Stop once ``batches`` training batches have run in this process (``how``: ``sigterm`` or ``sigint`` sent to
    this process, ``should_stop`` as ``max_time`` does), or during the last of them (``sigterm_in_step``: SIGTERM
    at its start, so it arrives mid-step and cuts what samples at the step's end). Writes ``<run>/losses.pt``:
    ``<global step>/<batch index>`` -> train/loss and ``val/<global step>`` -> val/loss."""

    def __init__(self, how: str = "sigterm", batches: int = 0) -> None:
        self.how, self.batches = how, batches
        self.seen = 0
        self.losses: dict[str, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.how == "sigterm_in_step" and self.seen + 1 == self.batches:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[f"{trainer.global_step}/{batch_idx}"] = float(outputs["loss"])
        self.seen += 1
        if self.seen != self.batches:
            return
        if self.how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif self.how == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        elif self.how == "should_stop":
            trainer.should_stop = True

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.losses[f"val/{trainer.global_step}"] = float(trainer.callback_metrics["val/loss"])

    def _save(self, trainer) -> None:
        torch.save(self.losses, Path(trainer.default_root_dir) / "losses.pt")

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._save(trainer)
