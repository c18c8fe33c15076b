"""A test-only callback (loaded by ``_target_`` in test runs): the sharded FID callback's value next to the value
this rank computes alone, at every step the callback scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl

from ddpm_lab.ranks import Ranks
from ddpm_lab.training import FIDCallback


class FIDProbe(pl.Callback):
    """Writes ``<run>/fid_probe_rank<r>.json``: per FID step, the logged (shared) scores and this rank's own."""

    def __init__(self) -> None:
        self.steps: dict[str, dict] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        fid = next(c for c in trainer.callbacks if isinstance(c, FIDCallback))
        if fid.last is None or fid._last_step != trainer.global_step or str(trainer.global_step) in self.steps:
            return
        alone = fid.single_rank().score(trainer, pl_module, Ranks(device=pl_module.device))
        logged = float(trainer.callback_metrics["fid/fid"])
        self.steps[str(trainer.global_step)] = {"shared": fid.last, "alone": alone, "logged": logged}
        path = Path(trainer.default_root_dir) / f"fid_probe_rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"world": trainer.world_size, "steps": self.steps}))
