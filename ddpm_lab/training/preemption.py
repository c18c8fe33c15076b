"""Surviving interruptions: ``last.ckpt`` at the final step however training ends (max_steps, max_time, SIGTERM,
Ctrl-C), always saved at the end of an optimizer step, so that ``resume=`` continues bit-exactly, and loggers
flushed with every checkpoint."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn


def request_stop(trainer: pl.Trainer) -> None:
    """Ask Lightning to stop after the running step, as its SIGTERM handler does: the loop raises
    ``SIGTERMException`` at the next step boundary, and sampling stops between two reverse steps."""
    trainer._signal_connector.received_sigterm = True  # the flag behind trainer.received_sigterm


def ends_after_this_batch(trainer: pl.Trainer) -> bool:
    """Whether training stops once this batch is done: ``max_steps`` reached, or ``should_stop`` (max_time, early
    stopping)."""
    max_steps = trainer.max_steps
    return bool(trainer.should_stop) or (max_steps is not None and 0 <= max_steps <= trainer.global_step)


class PreemptionGuard(pl.Callback):
    """Keep what a stop leaves behind consistent with the checkpoints, and a resume from it exact.

    * SIGTERM (SLURM before a time limit, ``kill``, ``scancel``): Lightning turns it into ``SIGTERMException``
      once the running step has finished (or between two reverse steps of a sample grid, strip or FID
      sampling: see ``callbacks.stop_sampling_on_sigterm``), on every rank; this then saves ``last.ckpt`` at
      that step into the ``ModelCheckpoint`` folder, where ``resume=<run>`` looks.
    * Ctrl-C (single process) does the same: the first press asks for a stop after the running step (a
      checkpoint of a half-done step would not resume exactly), a second one stops at once (KeyboardInterrupt;
      ``last.ckpt`` is still saved, with the step it had reached).
    * Training that ends normally (``max_steps``, ``max_time``): ``last.ckpt`` is saved at the end of the final
      step, as a periodic checkpoint is (:meth:`end_of_batch`), so that a resume with a larger ``max_steps``
      continues the epoch where it was rather than starting a new one.
    * Gradient accumulation: a stop asked for inside an accumulation window waits for the window's optimizer step
      (a checkpoint in between would lose the gradients already summed). ``should_stop`` is held on every rank
      alike; SIGTERM and Ctrl-C in a single process only (Lightning syncs DDP ranks on SIGTERM by itself).
    * Loggers are flushed with each checkpoint and again at the next step's start (Lightning logs a step's
      metrics after its checkpoint), so after ``kill -9`` the TensorBoard curve reaches the checkpoint that
      ``resume`` continues from, missing at most the checkpoint step's own point.
    """

    def __init__(self) -> None:
        self._flush_pending = False
        self._saved_step = -1  # the step of the newest checkpoint this process wrote
        self.stop_signal: signal.Signals | None = None  # SIGINT once a Ctrl-C asked to stop
        self._held = {"should_stop": False, "sigterm": False}  # stops waiting for the window's optimizer step
        self._trainer: pl.Trainer | None = None
        self._previous_sigint: Any = None

    # -- Ctrl-C: stop after the running step, like SIGTERM ---------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the Ctrl-C handler, where Ctrl-C raises KeyboardInterrupt (not where SIGINT is ignored, e.g. a
        background job) and in a single process (under DDP each rank would see the key at another point)."""
        main = threading.current_thread() is threading.main_thread()
        if not main or trainer.world_size > 1 or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return
        self._trainer = trainer
        self._previous_sigint = signal.signal(signal.SIGINT, self._ctrl_c)

    def _ctrl_c(self, signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, self._previous_sigint)  # a second Ctrl-C: KeyboardInterrupt at once
        self.stop_signal = signal.SIGINT
        if self._trainer is not None:
            request_stop(self._trainer)
        print("\nCtrl-C: stopping after the running step to save last.ckpt (Ctrl-C again to stop at once)", flush=True)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous_sigint is not None and signal.getsignal(signal.SIGINT) == self._ctrl_c:
            signal.signal(signal.SIGINT, self._previous_sigint)
        self._previous_sigint, self._trainer = None, None

    # -- the end of every training batch -------------------------------------------------------------------
    def end_of_batch(self, trainer: pl.Trainer) -> None:
        """Called by the module's ``on_train_batch_end``, the last hook of a batch (after every callback's, e.g.
        the Timer of ``max_time``): hold stops inside an accumulation window, save ``last.ckpt`` when training
        ends after this batch."""
        if trainer.accumulate_grad_batches > 1 and trainer.fit_loop._should_accumulate():
            self._hold(trainer)
            return
        if self._held["should_stop"]:
            trainer.should_stop = True
        if self._held["sigterm"]:
            request_stop(trainer)
        self._held = {"should_stop": False, "sigterm": False}
        if ends_after_this_batch(trainer):
            self._save_last(trainer, "end of training")

    def _hold(self, trainer: pl.Trainer) -> None:
        self._held["should_stop"] |= bool(trainer.should_stop)
        trainer.should_stop = False
        if trainer.world_size == 1:
            connector = trainer._signal_connector
            self._held["sigterm"] |= connector.received_sigterm
            connector.received_sigterm = False

    def _save_last(self, trainer: pl.Trainer, why: str) -> None:
        path = self._last_path(trainer, why)
        ckpt = trainer.checkpoint_callback
        if path is None or (getattr(ckpt, "save_last", False) and getattr(ckpt, "_defer_save_until_validation", False)):
            return  # ModelCheckpoint writes last.ckpt after this step's validation (SIGTERM in it: on_exception)
        written = self._saved_step == trainer.global_step and getattr(ckpt, "last_model_path", None) == path
        if not (written and os.path.isfile(path)):  # else ModelCheckpoint's save_last wrote it at this step
            trainer.save_checkpoint(path)
            rank_zero_info(f"{why}: saved {path} at step {trainer.global_step}")

    # -- checkpoints, logs, the end ------------------------------------------------------------------------
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
        # Normally saved by end_of_batch already; this covers a run that ended otherwise (max_epochs).
        path = self._last_path(trainer, "end of training")
        if path is not None and (self._saved_step != trainer.global_step or not os.path.isfile(path)):
            trainer.save_checkpoint(path)
            rank_zero_info(f"end of training: saved {path} at step {trainer.global_step}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            why = "Ctrl-C" if self.stop_signal == signal.SIGINT else "SIGTERM"
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


def find_guard(trainer: pl.Trainer | None) -> PreemptionGuard | None:
    """The trainer's :class:`PreemptionGuard`, if it has one."""
    if trainer is None:
        return None
    return next((cb for cb in trainer.callbacks if isinstance(cb, PreemptionGuard)), None)


def stopped_by(trainer: pl.Trainer) -> signal.Signals:
    """The signal that stopped ``trainer`` with ``SIGTERMException``: SIGINT when it was a Ctrl-C, else SIGTERM."""
    guard = find_guard(trainer)
    return signal.SIGINT if guard is not None and guard.stop_signal == signal.SIGINT else signal.SIGTERM
