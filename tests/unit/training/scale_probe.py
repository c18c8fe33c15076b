"""A test-only callback (loaded by ``_target_`` in test runs): what ``sampling_net`` returns, and each rank's EMA."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from ddpm_lab.training.ema import find_ema


class EMAProbe(pl.Callback):
    """Writes ``<run>/ema_probe_rank<r>.pt``: this rank's EMA weights and whether sampling used them."""

    def __init__(self) -> None:
        self.train_uses_ema: list[bool] = []
        self.val_uses_ema: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ema = find_ema(trainer)
        self.train_uses_ema.append(pl_module.sampling_net is ema._average_model.module.net)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.val_uses_ema.append(pl_module.sampling_net is pl_module.net)  # EMA weights are swapped in

    def on_train_end(self, trainer, pl_module) -> None:
        ema_net = find_ema(trainer).averaged_net(pl_module)
        torch.save(
            {
                "ema": {k: v.detach().cpu().clone() for k, v in ema_net.state_dict().items()},
                "train_uses_ema": self.train_uses_ema,
                "val_uses_ema": self.val_uses_ema,
                "precision": str(trainer.precision),
            },
            Path(trainer.default_root_dir) / f"ema_probe_rank{trainer.global_rank}.pt",
        )
