"""Surviving interruptions: a checkpoint when SIGTERM arrives, and loggers flushed with every checkpoint."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn


class PreemptionGuard(pl.Callback):
    """Keep what a kill leaves behind consistent with the checkpoints.

    * SIGTERM (SLURM before a time limit, ``kill``, ``scancel``): Lightning turns it into ``SIGTERMException``
      once the running step has finished, on every rank; this then saves ``last.ckpt`` at that step into the
      ``ModelCheckpoint`` folder, where ``resume=<run>`` looks.
    * Loggers are flushed with each checkpoint and again at the next step's start (Lightning logs a step's
      metrics after its checkpoint), so after ``kill -9`` the TensorBoard curve reaches the checkpoint that
      ``resume`` continues from, missing at most the checkpoint step's own point.
    """

    def __init__(self) -> None:
        self._flush_pending = False

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._flush(trainer)
        self._flush_pending = True

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._flush_pending:
            self._flush(trainer)
            self._flush_pending = False

    @staticmethod
    def _flush(trainer: pl.Trainer) -> None:
        for logger in trainer.loggers:
            logger.save()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        ckpt = trainer.checkpoint_callback
        dirpath = getattr(ckpt, "dirpath", None)
        if dirpath is None:
            rank_zero_warn("SIGTERM: no ModelCheckpoint callback, so no checkpoint is saved")
            return
        path = os.path.join(dirpath, ckpt.CHECKPOINT_NAME_LAST + ckpt.FILE_EXTENSION)
        trainer.save_checkpoint(path)
        rank_zero_info(f"SIGTERM: saved {path} at step {trainer.global_step}")
