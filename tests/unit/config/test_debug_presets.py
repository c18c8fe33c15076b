"""debug=overfit / profiler / limit compose with any dataset and build their trainer settings."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from pytorch_lightning.profilers import SimpleProfiler

from ddpm_lab.config import build


def test_debug_presets(cfg_train, tmp_path: Path) -> None:
    overfit = cfg_train("debug=overfit", "dataset=digits")
    assert overfit.trainer.overfit_batches == 1 and overfit.trainer.limit_val_batches == 0
    assert overfit.callbacks.ema is None and overfit.dataset.flip is False and overfit.trainer.max_steps == 500
    limit = cfg_train("debug=limit")
    assert (limit.trainer.max_steps, limit.trainer.limit_train_batches, limit.trainer.limit_val_batches) == (50, 10, 2)
    assert limit.model._target_ == cfg_train().model._target_  # the user's own model, unlike debug=default
    profiler = cfg_train("debug=profiler", f"paths.output_dir={tmp_path}").trainer.profiler
    built = build("trainer.profiler", OmegaConf.create(OmegaConf.to_container(profiler, resolve=True)))
    assert isinstance(built, SimpleProfiler) and Path(built.dirpath) == tmp_path and built.filename == "profile"
