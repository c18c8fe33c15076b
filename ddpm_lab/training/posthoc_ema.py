"""Post-hoc EMA during training (EDM2, Karras et al., 2024): keep power-function averages of the weights for a few
EMA lengths σ_rel, and write snapshots of them every N steps, so that ``python -m ddpm_lab.ema`` can reconstruct the
average of any other length after training (:mod:`ddpm_lab.artifacts.posthoc_ema`)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ddpm_lab.artifacts.posthoc_ema import SNAPSHOT_FORMAT, STATE_KEY, cpu_profiles, write_snapshot
from ddpm_lab.errors import CheckpointError, ConfigError, check_number
from ddpm_lab.models.power_ema import PowerEMA, check_sigma_rels

log = logging.getLogger(__name__)


class PosthocEMA(pl.Callback):
    """Power-function EMAs of the weights, one per ``sigma_rels``, updated after every optimizer step
    (:class:`~ddpm_lab.models.power_ema.PowerEMA`), and every ``every_n_steps`` steps a snapshot of all of them in
    ``folder/snapshot_<step>.pt`` (rank 0, atomically). Snapshots are never deleted by checkpoint retention
    (``save_top_k``): every one is a basis function of the reconstruction.

    Checkpoints hold the averages at their step, the run's id and the snapshot steps so far; ``resume=`` continues
    them exactly. The classic :class:`~ddpm_lab.training.EMA` is independent of this (grids and ``val/loss`` still
    use it): the two can run together.

    Args:
        sigma_rels: EMA lengths σ_rel tracked during training, each in (0, 1/√12); EDM2 tracks 0.05 and 0.10.
        every_n_steps: snapshot interval in optimizer steps (EDM2: about 1/200 of training, and more snapshots
            reconstruct more accurately).
        folder: where snapshots go (the run folder's ``posthoc_ema/``).
    """

    def __init__(
        self, sigma_rels: Sequence[float] = (0.05, 0.10), every_n_steps: int = 100, folder: str = "posthoc_ema"
    ) -> None:
        self.sigma_rels = check_sigma_rels(sigma_rels, "callbacks.posthoc_ema.sigma_rels")
        self.every_n_steps = check_number(every_n_steps, "callbacks.posthoc_ema.every_n_steps", int, low=1)
        self.folder = Path(folder)
        self.run_id: str | None = None
        self.snapshots: list[int] = []  # the steps of the snapshots written by this run so far
        self.ema: PowerEMA | None = None
        self._params: list[torch.Tensor] = []
        self._loaded: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After on_fit_start, so the averages take the weights' final device and layout (channels_last on CUDA).
        params = dict(pl_module.named_parameters())
        self._params = list(params.values())
        self.ema = PowerEMA(self.sigma_rels, params, step=trainer.global_step)
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            try:
                self.ema.load(loaded["profiles"], loaded["step"])
            except ValueError as e:
                raise CheckpointError(f"the post-hoc EMA state of the checkpoint does not fit this model: {e}") from e
        elif trainer.global_step > 0:
            raise ConfigError(
                f"callbacks.posthoc_ema is on, but the checkpoint (step {trainer.global_step}) was trained without "
                "it: post-hoc EMA must follow a run from step 0; start a new run, or leave callbacks=posthoc_ema out"
            )
        else:
            self.run_id, self.snapshots = uuid.uuid4().hex[:16], []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.ema is None or step <= self.ema.step:  # accumulating gradients: no optimizer step yet
            return
        self.ema.update(self._params, step)
        if step % self.every_n_steps == 0:
            if trainer.is_global_zero:
                write_snapshot(self.folder, step, str(self.run_id), self.sigma_rels, self.ema.profiles())
            self.snapshots.append(step)

    def state_dict(self) -> dict[str, Any]:
        if self.ema is None:
            return {}
        return {
            "format": SNAPSHOT_FORMAT,
            "run_id": self.run_id,
            "step": self.ema.step,
            "sigma_rels": list(self.sigma_rels),
            "every_n_steps": self.every_n_steps,
            "folder": str(self.folder),
            "snapshots": list(self.snapshots),
            "profiles": cpu_profiles(self.ema.profiles()),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        tracked = tuple(state_dict.get("sigma_rels") or ())
        if tracked != self.sigma_rels:
            raise ConfigError(
                f"callbacks.posthoc_ema.sigma_rels={list(self.sigma_rels)} but the checkpoint tracked {list(tracked)}: "
                "continue with the same sigma_rels (any other length is reconstructed afterwards)"
            )
        self.run_id, self.snapshots = str(state_dict["run_id"]), [int(s) for s in state_dict["snapshots"]]
        self._loaded = state_dict

    def tensor_bytes(self, pl_module: pl.LightningModule) -> int:
        """The bytes one snapshot (and the state in every checkpoint) holds: one copy of the weights per σ_rel."""
        return len(self.sigma_rels) * sum(p.numel() * p.element_size() for p in pl_module.parameters())


def find_posthoc_ema(trainer: pl.Trainer | None) -> PosthocEMA | None:
    """The trainer's :class:`PosthocEMA` callback, if it has one."""
    if trainer is None:
        return None
    return next((cb for cb in trainer.callbacks if isinstance(cb, PosthocEMA)), None)
