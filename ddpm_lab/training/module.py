"""The LightningModule: wraps a denoiser network and a diffusion process for training and validation.

The module never branches on the process. What it uses of one (``GaussianDiffusion`` and ``EDMDiffusion`` both
provide it) is the training protocol: ``training_timesteps(batch, device) -> (t, weights)``, ``loss(model, x0, t=t,
noise=..., reduction=..., weights=weights)``, ``sample_timesteps(batch, device, generator)`` (the fixed draws of
``val/loss``) and ``noise_quarter(t)`` (``train/loss_q0..q3``), where t is whatever the process's loss takes: integer
timesteps for DDPM, noise levels σ for EDM. ``val/bpd`` is DDPM's bound only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.utilities import grad_norm
from torch import nn

from ddpm_lab.artifacts.checkpoint import write_entry
from ddpm_lab.artifacts.figures import bound_terms_figure
from ddpm_lab.diffusion import BoundTerms, Denoiser, DiffusionProcess, GaussianDiffusion, Sampler, variational_bound
from ddpm_lab.diffusion.guidance import num_classes_of
from ddpm_lab.diffusion.importance import LossHistory
from ddpm_lab.errors import ConfigError, check_number
from ddpm_lab.training.ema import find_ema
from ddpm_lab.training.lr_schedules import ConstantLR
from ddpm_lab.training.media import image_loggers, log_figure
from ddpm_lab.training.preemption import find_guard
from ddpm_lab.training.resume_state import restore_resume_state, save_resume_state

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
LRScheduleFactory = Callable[..., Callable[[int], float]]  # (warmup_steps=N) -> (optimizer step -> lr factor)


def fused_can_clip(precision: str, gradient_clip_val: float | None) -> bool:
    """Whether a fused optimizer fits this run: Lightning refuses to clip gradients under mixed precision for an
    optimizer that unscales them itself (fused AdamW), so clipped mixed-precision runs keep the foreach update."""
    return not (precision.endswith("-mixed") and bool(gradient_clip_val))


class NonFiniteLossError(FloatingPointError):
    """The loss (or the weights) became NaN/inf; the message says at which step, lr and precision."""


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter optimizer state tensor (Adam's moments) its parameter's strides: fused and foreach
    updates need one layout, and a checkpoint's state loads contiguous while the weights may be channels_last."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


class DiffusionModule(pl.LightningModule):
    """Trains ``net`` to denoise under ``diffusion``; ``sampler`` is what sample grids and ``sample`` use.

    Args:
        net: the denoiser, ``net(x_t, t) -> prediction``.
        diffusion: the forward process, parameterization and loss.
        sampler: the default reverse sampler.
        optimizer: a factory ``params -> Optimizer`` (a Hydra ``_partial_``); AdamW goes fused on CUDA.
        warmup_steps: linear learning-rate warm-up from 0, in optimizer steps.
        lr_schedule: a factory ``(warmup_steps=N) -> (step -> factor of lr)`` (an ``lr_schedule`` option);
            None: warm-up, then constant.
        config: the plain-dict config stored in every checkpoint, enough to rebuild net, diffusion and sampler.
        val_seed: seed of the fixed noise and timesteps behind ``val/loss``.
        compile_net: run training steps through ``torch.compile(net)`` (validation and sampling stay eager).
        channels_last: on CUDA, keep the network's weights and the training batches in ``channels_last`` (NHWC)
            memory format, the layout cuDNN's tensor-core convolutions run in; CPUs keep NCHW.
        p_uncond: label dropout of a class-conditional ``net`` (``num_classes > 0``): the probability that a
            training label is replaced by the null class, so one network learns both ε(x, c) and ε(x, ∅) for
            classifier-free guidance (Ho & Salimans, 2022). Unused (and no random numbers drawn) otherwise.
        val_bpd_every: every this many validations, ``val/bpd`` (the variational bound in bits/dim) of the first
            validation batch and the figure of its terms (``val/bpd_terms``); 0 = never.
        val_bpd_stride: evaluate every k-th L_t for ``val/bpd`` (their sum scaled up: an approximate estimate).
    """

    def __init__(
        self,
        net: nn.Module,
        diffusion: DiffusionProcess,
        sampler: Sampler,
        optimizer: OptimizerFactory,
        warmup_steps: int = 0,
        config: dict[str, Any] | None = None,
        val_seed: int = 1234,
        compile_net: bool = False,
        channels_last: bool = True,
        p_uncond: float = 0.0,
        val_bpd_every: int = 0,
        val_bpd_stride: int = 10,
        lr_schedule: LRScheduleFactory | None = None,
    ) -> None:
        super().__init__()
        warmup_steps = check_number(warmup_steps, "warmup_steps", int, low=0)
        self.p_uncond = check_number(p_uncond, "conditioning.p_uncond", float, 0, 1, high_open=True)
        self.lr_factor = (lr_schedule or ConstantLR)(warmup_steps=warmup_steps)  # built now: bad values fail early
        self.val_bpd_every = check_number(val_bpd_every, "val_bpd_every", int, low=0)
        self.val_bpd_stride = check_number(val_bpd_stride, "val_bpd_stride", int, low=1)
        if self.val_bpd_every and not isinstance(diffusion, GaussianDiffusion):
            raise ConfigError(
                f"val_bpd_every={self.val_bpd_every} needs DDPM's variational bound, which "
                f"{type(diffusion).__name__} has none of: set val_bpd_every=0 (or train with diffusion=gaussian)"
            )
        self._validations = 0
        self._bound: BoundTerms | None = None
        self.net = net
        self.diffusion = diffusion
        self.sampler = sampler
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.config = config or {}
        self.val_seed = val_seed
        self.compile_net = compile_net
        self.channels_last = channels_last
        self._nonfinite: torch.Tensor | None = None  # on GPUs: whether a loss since the last check was NaN/inf
        self._train_forward: Callable[..., torch.Tensor] | None = None

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if self.trainer.world_size > 1:
            # Ranks start from the same seed; offset them so each draws its own t and ε.
            torch.manual_seed(torch.initial_seed() + self.global_rank)
        if self.compile_net and self._train_forward is None:
            # A compiled bound method, not a submodule: checkpoint keys stay ``net.*`` and the EMA copy stays eager.
            self._train_forward = torch.compile(self.net.forward)

    def on_fit_start(self) -> None:
        if self._uses_channels_last():
            # Parameters keep their identity (the optimizer's references stay valid); only their strides change.
            self.net.to(memory_format=torch.channels_last)
            for optimizer in self.trainer.optimizers:
                match_state_layout(optimizer)  # resumed moments were saved in another layout

    def _uses_channels_last(self) -> bool:
        return self.channels_last and self.device.type == "cuda"

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x_t, t) if y is None else self.net(x_t, t, y)

    @property
    def num_classes(self) -> int:
        """The classes ``net`` is conditioned on (0: unconditional)."""
        return num_classes_of(self.net)

    def class_labels(self, labels: torch.Tensor, drop: bool) -> torch.Tensor:
        """The labels the network sees: unlabeled images (−1) and, with ``drop``, a ``p_uncond`` fraction become
        the null class ``num_classes``. Uses the global torch RNG (seeded, saved and restored with the run)."""
        labels = labels.long()
        null = labels < 0
        if drop and self.p_uncond > 0:
            null = null | (torch.rand(labels.shape, device=labels.device) < self.p_uncond)
        return torch.where(null, torch.full_like(labels, self.num_classes), labels)

    def _denoiser(self, forward: Callable[..., torch.Tensor], batch: Any, drop: bool) -> Denoiser:
        """``forward`` itself for an unconditional net; for a conditional one, bound to the batch's labels; for an
        augmented batch (a third element: ``dataset.augment``), bound to its augmentation labels as well."""
        augmented = len(batch) > 2
        if not self.num_classes and not augmented:
            return forward
        y = self.class_labels(batch[1], drop) if self.num_classes else None
        if not augmented:
            return lambda x_t, t: forward(x_t, t, y)
        labels = batch[2]
        return lambda x_t, t: forward(x_t, t, y, augment_labels=labels)

    @property
    def sampling_net(self) -> nn.Module:
        """The weights samples are drawn from: the EMA average while the trainer has an ``EMA`` callback."""
        ema = find_ema(self._trainer)
        averaged = ema.averaged_net(self) if ema is not None else None
        return self.net if averaged is None else averaged

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0 = batch[0]
        if self._uses_channels_last():
            x0 = x0.contiguous(memory_format=torch.channels_last)
        t, weights = self.diffusion.training_timesteps(x0.shape[0], x0.device)  # uniform t unless importance sampling
        model = self._denoiser(self._train_forward or self.net, batch, drop=True)
        per_sample = self.diffusion.loss(model, x0, t=t, reduction="none", weights=weights)
        loss = per_sample.mean()
        self._check_finite(loss)
        if self._shows_this_step(batch_idx):
            self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        if self._logs_this_step():
            self._log_loss_quarters(per_sample.detach(), t)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        guard = find_guard(self._trainer)  # the last hook of a batch, after every callback's (max_time's Timer too)
        if guard is not None:
            guard.end_of_batch(self.trainer)  # stops at optimizer-step boundaries, last.ckpt at the final step

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes this step's logs (``log_every_n_steps``): extra diagnostics only then."""
        return self._trainer is not None and (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0

    def _shows_this_step(self, batch_idx: int) -> bool:
        """Whether anyone reads this step's ``train/loss``: the loggers, the progress bar (it refreshes every
        ``refresh_rate`` batches and at the epoch's last one) or the end of training. ``self.log`` costs ~0.5 ms of
        host time per call (Lightning moves its result object to the device each time), the largest per-step cost
        of the loop on a small network; other steps skip it. Between two logged steps ``callback_metrics`` keeps
        the last logged value, as Lightning does between two logging steps anyway."""
        trainer = self._trainer
        if trainer is None or self._logs_this_step() or 0 < trainer.max_steps <= self.global_step + 1:
            return True
        bar = trainer.progress_bar_callback
        if bar is None or not bar.is_enabled:
            return False
        if not isinstance(bar, TQDMProgressBar):
            return True  # other bars (Rich) refresh by time: any step may be shown
        n = batch_idx + 1
        return n % bar.refresh_rate == 0 or n == trainer.num_training_batches

    def _log_loss_quarters(self, per_sample: torch.Tensor, t: torch.Tensor) -> None:
        """``train/loss_q0..q3``: the batch loss split by the quarter of the training noise levels t falls in
        (DDPM: t in [0, T/4), …, [3T/4, T), as improved-diffusion; EDM: quartiles of ln σ)."""
        quarter = self.diffusion.noise_quarter(t)
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
        loss = self.diffusion.loss(self._denoiser(self.net, batch, drop=False), x0, t=t, noise=noise)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=x0.shape[0])
        if batch_idx == 0 and self._bpd_due():
            self._bound = variational_bound(
                self.net,
                self.diffusion,
                x0,
                stride=self.val_bpd_stride,
                generator=torch.Generator().manual_seed(self.val_seed),
                fixed=getattr(self.sampler, "variance", "fixed_small"),
            )
            self.log("val/bpd", self._bound.total.mean(), sync_dist=True, batch_size=x0.shape[0])
        return loss

    def _bpd_due(self) -> bool:
        """Whether this validation computes ``val/bpd``: every ``val_bpd_every``-th one, not the sanity check.

        Counted from the training batches done (Lightning validates every ``val_check_batch`` of them), so the
        schedule is a function of the step: a resumed run keeps it, and the extra validation Lightning runs when
        training stops early (max_time) does not shift it. Time-based validation counts validations instead."""
        if self.val_bpd_every <= 0 or self.trainer.sanity_checking:
            return False
        every = self.trainer.val_check_batch
        if isinstance(every, int) and every > 0:
            index = (self.trainer.fit_loop.total_batch_idx + 1) // every - 1
        else:
            index = self._validations
        return index % self.val_bpd_every == 0

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self._validations += 1
        bound, self._bound = self._bound, None
        if bound is None or self.global_rank != 0 or not image_loggers(self.trainer):
            return
        fig = bound_terms_figure(
            bound.timesteps,
            bound.terms.mean(0).tolist(),
            bound.decoder.mean().item(),
            bound.prior.mean().item(),
            self.diffusion.num_timesteps,
            title=f"val/bpd = {bound.total.mean().item():.3f} at step {self.global_step} ({len(bound.total)} images)",
        )
        log_figure(self.trainer, "val/bpd_terms", fig, self.global_step)

    def configure_optimizers(self) -> dict[str, Any]:
        factory = self.optimizer_factory
        kwargs: dict[str, Any] = {}
        target = getattr(factory, "func", factory)
        accepts_fused = "fused" in inspect.signature(target).parameters
        if (
            accepts_fused
            and self.device.type == "cuda"
            and "fused" not in getattr(factory, "keywords", {})
            and fused_can_clip(str(self.trainer.precision), self.trainer.gradient_clip_val)
        ):
            kwargs["fused"] = True  # one kernel for the whole update
        optimizer = factory(self.net.parameters(), **kwargs)
        # A lambda, not the schedule object: LambdaLR would store an object's attributes in checkpoints and put
        # them back on resume, so a resume with a new trainer.max_steps would keep decaying to the old one.
        factor = self.lr_factor
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def _check_finite(self, loss: torch.Tensor) -> None:
        """Stop before a NaN/inf loss reaches the weights (all ranks agree, so none is left waiting).

        On an accelerator, reading the loss on the host waits for the device: steps that do not log only
        accumulate the verdict on the device, and logging steps check it (so a run stops at the first logging
        step after the loss went non-finite; checkpoints refuse non-finite weights in between). CPUs check
        every step, which costs nothing there.
        """
        finite = torch.isfinite(loss.detach())
        if loss.device.type != "cpu":
            finite = finite if self._nonfinite is None else finite & ~self._nonfinite
            if not self._logs_this_step():
                self._nonfinite = ~finite
                return
            self._nonfinite = None
        bad = self.trainer.strategy.reduce_boolean_decision(not bool(finite), all=False)
        if bad:
            value = "non-finite at a step since the last check" if bool(torch.isfinite(loss)) else loss.item()
            raise NonFiniteLossError(f"train/loss is {value} {self._where(self.trainer.global_step + 1)}")

    def _where(self, step: int) -> str:
        trainer = self.trainer
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
        fix = "lower optimizer.lr or raise warmup_steps"
        if trainer.precision == "16-mixed":
            fix += ", or use trainer.precision=bf16-mixed (float16 overflows)"
        return (
            f"at step {step} (lr {lr:.3g}, precision {trainer.precision}); training stopped, "
            f"last good checkpoint: {last}. Fix: {fix}"
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not all(bool(p.isfinite().all()) for p in self.net.parameters()):
            # Raising here keeps the last good checkpoint on disk instead of overwriting it with NaNs.
            raise NonFiniteLossError(f"the weights are non-finite {self._where(self.trainer.global_step)}")
        write_entry(checkpoint, self.config)
        save_resume_state(self, checkpoint, self._loss_history)

    @property
    def _loss_history(self) -> LossHistory | None:
        """The importance sampler's loss history (a step's t depends on it), when the diffusion keeps one."""
        return getattr(self.diffusion, "loss_history", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "current_model_state" in checkpoint and find_ema(self._trainer) is None:
            # An EMA checkpoint keeps the average in state_dict; without EMA, continue from the raw weights.
            checkpoint["state_dict"] = checkpoint["current_model_state"]
        restore_resume_state(self, checkpoint, self._loss_history)
