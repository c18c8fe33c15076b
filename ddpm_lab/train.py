"""Training entry point: ``python -m ddpm_lab.train [group=option ...] [key=value ...]``.

``train(cfg)`` composes and runs; ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.config import build_components, config_dir, stored_config
from ddpm_lab.module import DiffusionModule

log = logging.getLogger(__name__)


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers), skipping nulls."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def train(cfg: DictConfig) -> dict[str, float]:
    """Build data, model and trainer from ``cfg``, train, and return the final metrics."""
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
    )
    log.info("model: %s, %.2fM parameters", type(net).__name__, sum(p.numel() for p in net.parameters()) / 1e6)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=_instantiate_all(cfg.get("callbacks")),
                                      logger=_instantiate_all(cfg.get("logger")))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("finished at step %d: %s; outputs in %s", trainer.global_step, metrics, cfg.paths.output_dir)
    return metrics


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # The value Hydra sweepers (e.g. Optuna) minimise.
    return metrics.get(cfg.get("optimized_metric") or "", None)


if __name__ == "__main__":
    main()
