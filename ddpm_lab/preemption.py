"""Surviving interruptions: checkpoints that are complete or absent, and a checkpoint when SIGTERM arrives."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp-"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write ``<dir>/.<name>.tmp-<pid>``, fsync, then ``os.replace`` onto ``<dir>/<name>``.

    A rename within one folder is atomic, so ``kill -9`` at any moment leaves either the previous complete
    file or the new complete file, never a truncated one. (Lightning's own save stages the file in the
    system temp folder and moves it, which is a plain copy when that is another file system.)
    Remote paths keep Lightning's fsspec saving.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}{TEMP_SUFFIX}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temp_files(folder: str | os.PathLike) -> None:
    """Delete half-written checkpoints that a killed process left behind."""
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}*"):
        log.info("removing %s, left by an interrupted save", tmp)
        tmp.unlink(missing_ok=True)


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

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._flush(trainer)
        self._flush_pending = True

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
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
