"""Lightning callbacks that show the model's progress in TensorBoard and in the run folder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from ddpm_lab.diffusion import randn
from ddpm_lab.images import image_grid, save_png
from ddpm_lab.samplers import Sampler

log = logging.getLogger(__name__)


def tensorboard(trainer: pl.Trainer):
    """The TensorBoard ``SummaryWriter`` of the trainer's first TensorBoard logger, or None."""
    from pytorch_lightning.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class SampleGrid(pl.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end), sample ``n`` images from fixed noise.

    The grid goes to TensorBoard as ``samples/grid`` (one tag over training: use the step slider) and to
    ``<run>/samples/step_XXXXXXX.png``. Same seed every time, so grids differ only by the weights.

    Args:
        every_n_steps: sampling interval; 0 turns periodic grids off (the final one stays).
        n: images per grid.
        seed: seed of x_T and of the sampler's noise.
        sampler: overrides the module's sampler (e.g. a respaced DDPM to keep grids cheap).
        out_dir: where PNGs go; defaults to the trainer's ``default_root_dir``.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        n: int = 64,
        seed: int = 0,
        sampler: Sampler | None = None,
        out_dir: str | None = None,
    ) -> None:
        super().__init__()
        if every_n_steps < 0 or n < 1:
            raise ValueError(f"SampleGrid needs every_n_steps >= 0 and n >= 1, got {every_n_steps}, {n}")
        self.every_n_steps, self.n, self.seed = every_n_steps, n, seed
        self.sampler = sampler
        self.out_dir = out_dir
        self._last_step = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.log_grid(trainer, pl_module)

    @torch.no_grad()
    def sample(self, pl_module: pl.LightningModule) -> torch.Tensor:
        net = pl_module.sampling_net
        was_training = net.training
        net.eval()
        try:
            shape = (self.n, net.in_channels, net.image_size, net.image_size)
            x_T = randn(shape, torch.Generator().manual_seed(self.seed), pl_module.device)
            return pl_module.diffusion.sample(
                net, x_T=x_T, sampler=self.sampler or pl_module.sampler,
                generator=torch.Generator().manual_seed(self.seed + 1),
            )
        finally:
            net.train(was_training)

    @rank_zero_only
    def log_grid(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        step = trainer.global_step
        self._last_step = step
        grid = image_grid(self.sample(pl_module))
        writer = tensorboard(trainer)
        if writer is not None:
            writer.add_image("samples/grid", grid, global_step=step)
        out = Path(self.out_dir or trainer.default_root_dir) / "samples" / f"step_{step:07d}.png"
        save_png(grid, out)
        log.info("sample grid at step %d: %s", step, out)
