"""The LightningModule: wraps a denoiser network and a GaussianDiffusion for training and validation."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import grad_norm
from torch import nn

from ddpm_lab.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_KEY
from ddpm_lab.diffusion import GaussianDiffusion
from ddpm_lab.samplers import Sampler

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class DiffusionModule(pl.LightningModule):
    """Trains ``net`` to denoise under ``diffusion``; ``sampler`` is what sample grids and ``sample`` use.

    Args:
        net: the denoiser, ``net(x_t, t) -> prediction``.
        diffusion: the forward process, parameterization and loss.
        sampler: the default reverse sampler.
        optimizer: a factory ``params -> Optimizer`` (a Hydra ``_partial_``); AdamW goes fused on CUDA.
        warmup_steps: linear learning-rate warm-up from 0, in optimizer steps.
        config: the plain-dict config stored in every checkpoint, enough to rebuild net, diffusion and sampler.
        val_seed: seed of the fixed noise and timesteps behind ``val/loss``.
    """

    def __init__(
        self,
        net: nn.Module,
        diffusion: GaussianDiffusion,
        sampler: Sampler,
        optimizer: OptimizerFactory,
        warmup_steps: int = 0,
        config: dict[str, Any] | None = None,
        val_seed: int = 1234,
    ) -> None:
        super().__init__()
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.net = net
        self.diffusion = diffusion
        self.sampler = sampler
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.config = config or {}
        self.val_seed = val_seed

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t)

    @property
    def sampling_net(self) -> nn.Module:
        """The weights samples are drawn from."""
        return self.net

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0 = batch[0]
        t = self.diffusion.sample_timesteps(x0.shape[0], x0.device)
        per_sample = self.diffusion.loss(self.net, x0, t=t, reduction="none")
        loss = per_sample.mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        if self._logs_this_step():
            self._log_loss_quarters(per_sample.detach(), t)
        return loss

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes this step's logs (``log_every_n_steps``): extra diagnostics only then."""
        return self._trainer is not None and (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0

    def _log_loss_quarters(self, per_sample: torch.Tensor, t: torch.Tensor) -> None:
        """``train/loss_q0..q3``: the batch loss split by t in [0, T/4), …, [3T/4, T) (improved-diffusion)."""
        quarter = (t * 4) // self.diffusion.num_timesteps
        for q in range(4):
            mask = quarter == q
            if bool(mask.any()):
                self.log(f"train/loss_q{q}", per_sample[mask].mean(), batch_size=int(mask.sum()))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Before clipping: the raw gradient norm, on logged steps only (it synchronizes on GPUs).
        norms = grad_norm(self.net, norm_type=2) if self._logs_this_step() else {}
        if norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # Fixed t and ε per batch: val/loss is comparable across steps, runs and checkpoints.
        x0 = batch[0]
        g = torch.Generator().manual_seed(self.val_seed + 100_003 * batch_idx + self.global_rank)
        t = self.diffusion.sample_timesteps(x0.shape[0], x0.device, generator=g)
        noise = torch.randn(x0.shape, generator=g).to(x0.device)
        loss = self.diffusion.loss(self.net, x0, t=t, noise=noise)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=x0.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        factory = self.optimizer_factory
        kwargs: dict[str, Any] = {}
        target = getattr(factory, "func", factory)
        accepts_fused = "fused" in inspect.signature(target).parameters
        if accepts_fused and self.device.type == "cuda" and "fused" not in getattr(factory, "keywords", {}):
            kwargs["fused"] = True  # one kernel for the whole update
        optimizer = factory(self.net.parameters(), **kwargs)
        warmup = self.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"format": CHECKPOINT_FORMAT, "config": self.config}
