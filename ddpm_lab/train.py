"""Training entry point: ``python -m ddpm_lab.train [group=option ...] [key=value ...]``.

``train(cfg)`` checks, builds and fits; ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import logging
import signal
from typing import Any, NoReturn

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ddpm_lab.artifacts.checkpoint import checkpoint_step
from ddpm_lab.config import build, build_all, build_components, build_module, check_train_config, config_dir
from ddpm_lab.config.checks import check_posthoc_continues
from ddpm_lab.config.conditioning import keep_checkpoint_classes
from ddpm_lab.config.entry import entry_point
from ddpm_lab.config.hydra_callbacks import is_multirun, multirun_job
from ddpm_lab.config.resume import (
    RecordResumeStart,
    check_resumable,
    continue_loggers,
    resume_checkpoint,
    resumed_config,
)
from ddpm_lab.config.run_folder import discard_fresh_run_folder
from ddpm_lab.errors import ConfigError, user_errors
from ddpm_lab.training import PreemptionGuard
from ddpm_lab.training.determinism import deterministic_trainer_options
from ddpm_lab.training.preemption import stopped_by

log = logging.getLogger(__name__)


def _callback_order(callback: Any) -> int:
    """Weight averaging first (its per-step update must land before sample grids and checkpoints read it);
    the preemption guard last (it saves on SIGTERM after the others have put the raw weights back)."""
    return 0 if isinstance(callback, WeightAveraging) else 2 if isinstance(callback, PreemptionGuard) else 1


def _callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """Every ``callbacks.*`` entry built, in the order they must run (see :func:`_callback_order`)."""
    return sorted(build_all(cfg.get("callbacks"), "callbacks"), key=_callback_order)


def _refuse_multirun_with_subprocess_ddp(trainer: pl.Trainer) -> None:
    """Lightning's DDP re-runs the command line for each extra process: under -m each would re-run the sweep."""
    if not is_multirun():
        return
    if isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher):
        raise ConfigError(
            "multirun (-m) cannot start DDP processes itself (every process would re-run the whole sweep): "
            "sweep on SLURM with hydra/launcher=slurm, where SLURM starts one task per GPU, "
            "or run each configuration as a single run"
        )


def train(cfg: DictConfig) -> dict[str, float]:
    """Check ``cfg``, build data, model and trainer from it, train, and return the final metrics.

    Raises ``ddpm_lab.errors.UserError`` subclasses (one line each) before any data is read.
    """
    ckpt_path = cfg.get("ckpt_path")
    if cfg.get("resume"):
        cfg = resumed_config(cfg)
    check_train_config(cfg)
    if cfg.get("resume"):
        ckpt_path = resume_checkpoint(cfg.paths.output_dir)
        keep_checkpoint_classes(cfg, ckpt_path)  # before any logger or data module: labels keep their meaning
        continue_loggers(cfg, checkpoint_step(ckpt_path))
        log.info("resuming from %s", ckpt_path)
    deterministic = deterministic_trainer_options(bool(OmegaConf.select(cfg, "trainer.deterministic")))
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = build("dataset", cfg.dataset)
    module = build_module(cfg, *build_components(cfg))
    if cfg.get("resume"):
        check_resumable(module.net, ckpt_path, cfg.resume)
    if ckpt_path:
        check_posthoc_continues(cfg, ckpt_path)
    log.info(
        "model: %s, %.2fM parameters", type(module.net).__name__, sum(p.numel() for p in module.net.parameters()) / 1e6
    )
    callbacks = _callbacks(cfg) + ([RecordResumeStart()] if cfg.get("resume") else [])
    loggers = build_all(cfg.get("logger"), "logger")
    trainer: pl.Trainer = build("trainer", cfg.trainer, callbacks=callbacks, logger=loggers, **deterministic)
    _refuse_multirun_with_subprocess_ddp(trainer)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:  # SIGTERM, or a Ctrl-C that PreemptionGuard turned into a stop after the step
        _stopped(trainer, cfg, stopped_by(trainer))
    except SystemExit as e:  # Lightning answers Ctrl-C (after PreemptionGuard saved last.ckpt) with sys.exit(1)
        if isinstance(e.__context__, KeyboardInterrupt):
            _stopped(trainer, cfg, signal.SIGINT)
        raise
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("finished at step %d: %s; outputs in %s", trainer.global_step, metrics, cfg.paths.output_dir)
    return metrics


def _stopped(trainer: pl.Trainer, cfg: DictConfig, signum: signal.Signals) -> NoReturn:
    """Log how to continue a run stopped by a signal and exit with the shell's status for it (143, 130)."""
    log.warning(
        "stopped by %s at step %d; continue with: python -m ddpm_lab.train \"resume='%s'\"",
        signum.name,
        trainer.global_step,
        cfg.paths.output_dir,
    )
    raise SystemExit(128 + signum) from None


def _multirun_job(cfg: DictConfig) -> float | None:
    """One job of a sweep (see ``multirun_job``): a failed one is NaN, what a sweeper (Optuna) takes as failed."""
    metrics = multirun_job(lambda: train(cfg))
    if metrics is None:
        return float("nan")
    return metrics.get(cfg.get("optimized_metric") or "", None)


@entry_point("train")  # a mistyped key: one line, exit status 2
@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    if is_multirun():
        return _multirun_job(cfg)
    with user_errors(cleanup=discard_fresh_run_folder):  # one line on stderr, exit status 2, no empty run folder
        metrics = train(cfg)
    # The value Hydra sweepers (e.g. Optuna) minimise.
    return metrics.get(cfg.get("optimized_metric") or "", None)


if __name__ == "__main__":
    main()
