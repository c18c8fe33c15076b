"""Training entry point: ``python -m ddpm_lab.train [group=option ...] [key=value ...]``.

``train(cfg)`` composes and runs; ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ddpm_lab.config import build_components, config_dir, discard_fresh_run_folder, stored_config
from ddpm_lab.errors import user_errors
from ddpm_lab.module import DiffusionModule
from ddpm_lab.preemption import AtomicCheckpointIO, PreemptionGuard, remove_stale_temp_files
from ddpm_lab.resume import checkpoint_step, continue_tensorboard, last_checkpoint, resumed_config
from ddpm_lab.validate import validate_train_config

log = logging.getLogger(__name__)


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers), skipping nulls."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def _callbacks(cfg: DictConfig) -> list[pl.Callback]:
    callbacks = _instantiate_all(cfg.get("callbacks"))
    # Weight averaging first: its per-step update must land before sample grids (and checkpoints) read it.
    callbacks.sort(key=lambda cb: not isinstance(cb, WeightAveraging))
    return [*callbacks, PreemptionGuard()]


def _refuse_multirun_with_subprocess_ddp(trainer: pl.Trainer) -> None:
    """Lightning's DDP re-runs the command line for each extra process: under -m each would re-run the sweep."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode is not None and HydraConfig.get().mode.name == "MULTIRUN"):
        return
    if isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher):
        raise RuntimeError(
            "multirun (-m) cannot start DDP processes itself (every process would re-run the whole sweep): "
            "sweep on SLURM with hydra/launcher=slurm, where SLURM starts one task per GPU, "
            "or run each configuration as a single run"
        )


def train(cfg: DictConfig) -> dict[str, float]:
    """Check ``cfg``, build data, model and trainer from it, train, and return the final metrics.

    Raises ``ddpm_lab.errors.ConfigError`` (and the other user errors) before any data is read.
    """
    ckpt_path = cfg.get("ckpt_path")
    if cfg.get("resume"):
        cfg = resumed_config(cfg)
    validate_train_config(cfg)
    if cfg.get("resume"):
        ckpt_path = last_checkpoint(cfg.paths.output_dir)
        remove_stale_temp_files(ckpt_path.parent)
        continue_tensorboard(cfg, checkpoint_step(ckpt_path))
        log.info("resuming from %s", ckpt_path)
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    datamodule: pl.LightningDataModule = instantiate(cfg.dataset)
    net, diffusion, sampler = build_components(cfg)
    module = DiffusionModule(
        net=net,
        diffusion=diffusion,
        sampler=sampler,
        optimizer=instantiate(cfg.optimizer),
        warmup_steps=int(cfg.warmup_steps),
        config=stored_config(cfg),
        compile_net=bool(cfg.get("compile", False)),
    )
    log.info("model: %s, %.2fM parameters", type(net).__name__, sum(p.numel() for p in net.parameters()) / 1e6)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=_callbacks(cfg), logger=_instantiate_all(cfg.get("logger")),
                                      plugins=[AtomicCheckpointIO()])
    _refuse_multirun_with_subprocess_ddp(trainer)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        log.warning("stopped by SIGTERM at step %d; continue with: python -m ddpm_lab.train \"resume='%s'\"",
                    trainer.global_step, cfg.paths.output_dir)
        raise SystemExit(128 + signal.SIGTERM) from None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("finished at step %d: %s; outputs in %s", trainer.global_step, metrics, cfg.paths.output_dir)
    return metrics


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    with user_errors(cleanup=discard_fresh_run_folder):  # one line on stderr, exit status 2, no empty run folder
        metrics = train(cfg)
    # The value Hydra sweepers (e.g. Optuna) minimise.
    return metrics.get(cfg.get("optimized_metric") or "", None)


if __name__ == "__main__":
    main()
