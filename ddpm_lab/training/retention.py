"""Which checkpoints a run keeps: Lightning's ``ModelCheckpoint`` made safe and exact for run folders that are
resumed, moved or shared (``callbacks.model_checkpoint`` and ``callbacks.best_fid`` in ``configs/callbacks/``).

A checkpoint carries the callback's record of the files it kept (``best_k_models``, ``last_model_path``, ...), and
Lightning deletes files named there when it prunes. That record is untrusted input, so each file is looked for by
its name in the callback's own folder only: a moved run keeps pruning its own files, and a hostile record
(``../../other_run/checkpoints/step_9.ckpt``) names nothing that can be deleted. And when ``save_top_k`` shrinks on
resume, Lightning never prunes (it drops one file only when exactly ``k`` are kept): here the current limit applies
from the first step, as the start-up summary promises.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose restored record names only files in its own folder, and whose current
    ``save_top_k`` applies to a resumed run from its first step (the newest-ranked files are kept)."""

    @property
    def state_key(self) -> str:
        """Lightning's own key: the state of checkpoints written with ``ModelCheckpoint`` is restored."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The files are where this run keeps them now (a moved or copied run folder too), and nowhere else.
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})
        kept = {}
        for path, score in dict(self.best_k_models).items():
            here = self._here(path)
            if here is not None and isinstance(score, (torch.Tensor, int, float)) and not isinstance(score, bool):
                kept[here] = torch.as_tensor(score)
        self.best_k_models = kept
        self.last_model_path = self._here(self.last_model_path) or ""
        self._rank()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.save_top_k < 0 or len(self.best_k_models) <= self.save_top_k:
            return
        ranked = sorted(self.best_k_models, key=lambda p: float(self.best_k_models[p]), reverse=self.mode == "max")
        resumed = Path(trainer.ckpt_path).absolute() if trainer.ckpt_path else None
        for path in ranked[self.save_top_k :]:
            del self.best_k_models[path]
            if path != self.last_model_path and Path(path).absolute() != resumed:
                self._remove_checkpoint(trainer, path)
        self._rank()

    def _here(self, path: Any) -> str | None:
        """The file of ``path``'s name in this callback's folder, when that is a plain checkpoint file; else None."""
        if not isinstance(path, str) or not path or self.dirpath is None:
            return None
        name = os.path.basename(path)
        if not name.endswith(self.FILE_EXTENSION) or name.startswith("."):
            return None
        here = Path(self.dirpath) / name
        try:
            plain = stat.S_ISREG(here.lstat().st_mode)
        except OSError:
            return None
        return str(here) if plain else None

    def _rank(self) -> None:
        """The best and the k-th best of the kept files, as Lightning sets them after each save."""
        if not self.best_k_models:
            self.best_model_path, self.kth_best_model_path = "", ""
            return
        best, worst = (min, max) if self.mode == "min" else (max, min)
        if len(self.best_k_models) == self.save_top_k:
            self.kth_best_model_path = worst(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        self.best_model_path = best(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
        self.best_model_score = self.best_k_models[self.best_model_path]
