"""Surviving interruptions: ``last.ckpt`` at the final step however training ends (max_steps, max_time, SIGTERM,
Ctrl-C), and loggers flushed with every checkpoint."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn


class PreemptionGuard(pl.Callback):
    """Keep what a kill leaves behind consistent with the checkpoints.

    * SIGTERM (SLURM before a time limit, ``kill``, ``scancel``): Lightning turns it into ``SIGTERMException``
      once the running step has finished (or between two reverse steps of a sample grid, strip or FID
      sampling: see ``callbacks.stop_sampling_on_sigterm``), on every rank; this then saves ``last.ckpt`` at
      that step into the ``ModelCheckpoint`` folder, where ``resume=<run>`` looks. Ctrl-C (``KeyboardInterrupt``)
      the same.
    * Training that ends normally (``max_steps``, ``max_time``) at a step that is no multiple of the
      checkpoint interval: ``last.ckpt`` is saved at the final step.
    * Loggers are flushed with each checkpoint and again at the next step's start (Lightning logs a step's
      metrics after its checkpoint), so after ``kill -9`` the TensorBoard curve reaches the checkpoint that
      ``resume`` continues from, missing at most the checkpoint step's own point.
    """

    def __init__(self) -> None:
        self._flush_pending = False
        self._saved_step = -1  # the step of the newest checkpoint this process wrote

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._flush(trainer)
        self._flush_pending = True
        self._saved_step = trainer.global_step

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

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self._last_path(trainer, "end of training")
        if path is not None and (self._saved_step != trainer.global_step or not os.path.isfile(path)):
            trainer.save_checkpoint(path)
            rank_zero_info(f"end of training: saved {path} at step {trainer.global_step}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            why = "SIGTERM"
        elif isinstance(exception, KeyboardInterrupt):
            why = "Ctrl-C"
        else:
            return
        path = self._last_path(trainer, why)
        if path is None or trainer.global_step == 0:  # nothing trained yet: nothing to keep
            return
        trainer.save_checkpoint(path)
        rank_zero_info(f"{why}: saved {path} at step {trainer.global_step}")

    @staticmethod
    def _last_path(trainer: pl.Trainer, why: str) -> str | None:
        """``<checkpoint folder>/last.ckpt``, or None (with a warning) without a ModelCheckpoint callback."""
        ckpt = trainer.checkpoint_callback
        dirpath = getattr(ckpt, "dirpath", None)
        if dirpath is None:
            rank_zero_warn(f"{why}: no ModelCheckpoint callback, so no checkpoint is saved")
            return None
        return os.path.join(dirpath, ckpt.CHECKPOINT_NAME_LAST + ckpt.FILE_EXTENSION)
