"""``resume=``: a run's recorded overrides replayed (only those of launches that reached training, later ones
winning), a folder that is no run refused before anything is created, and the loggers continued without deleting
what the run logged."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpm_lab.config.resolvers import resume_run_dir
from ddpm_lab.config.resume import continue_loggers, merge_overrides, run_overrides
from ddpm_lab.errors import ResumeError


def test_resume_replays_the_run_overrides_then_the_new_ones():
    assert merge_overrides(
        ["model=unet_tiny", "+foo=1", "trainer.max_steps=10"], ["trainer.max_steps=20", "foo=2"]
    ) == ["model=unet_tiny", "trainer.max_steps=20", "+foo=2"]


def test_resume_refuses_a_folder_that_is_not_a_run_before_creating_anything(tmp_path):
    fresh = str(tmp_path / "fresh")
    assert resume_run_dir(None, fresh) == fresh and not Path(fresh).exists()  # claimed later, by RunFolders
    with pytest.raises(ResumeError, match="not a training run folder"):
        resume_run_dir(str(tmp_path / "nope"), "fresh")
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text("[]")
    with pytest.raises(ResumeError, match="no checkpoint"):
        resume_run_dir(str(tmp_path / "run"), "fresh")
    assert not (tmp_path / "nope").exists()


def test_resume_replays_only_records_of_launches_that_reached_training(tmp_path: Path, hydra_initialised):
    hydra = tmp_path / ".hydra"
    for name, overrides in [
        ("", "[model=unet_tiny, trainer.max_steps=10]"),
        ("resume_2026-01-01_00-00-00_aaaaaa", "[trainer.max_steps=20]"),
        ("resume_2026-01-02_00-00-00_bbbbbb", "[optimizer.lr=-1, trainer.max_steps=30]"),  # failed: no 'started'
    ]:
        (hydra / name).mkdir(parents=True, exist_ok=True)
        (hydra / name / "overrides.yaml").write_text(overrides)
    (hydra / "resume_2026-01-01_00-00-00_aaaaaa" / "started").write_text("10\n")
    assert run_overrides(tmp_path) == ["model=unet_tiny", "trainer.max_steps=20"]


def test_resumed_loggers_keep_what_the_run_logged(tmp_path: Path, cfg_train):
    """On resume TensorBoard purges after the checkpoint's step, CSV writes beside (never over) its metrics.csv,
    MLflow goes on in the run's own MLflow run."""
    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    (run / "csv" / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    (run / "csv" / "resume_1").mkdir()  # an earlier resume
    (run / "mlruns" / "123" / "abcdef").mkdir(parents=True)
    (run / "mlruns" / "123" / "abcdef" / "meta.yaml").write_text("run_id: abcdef\n")
    cfg = cfg_train("logger=[tensorboard,csv,mlflow]", f"paths.output_dir={run}")
    continue_loggers(cfg, 3)
    assert cfg.logger.tensorboard.purge_step == 3
    assert cfg.logger.csv.version == "resume_2"
    assert cfg.logger.mlflow.run_id == "abcdef"
    (run / "mlruns" / "123" / "other").mkdir()  # two MLflow runs: which one is the run's is unknown, start a new one
    (run / "mlruns" / "123" / "other" / "meta.yaml").write_text("run_id: other\n")
    cfg = cfg_train("logger=many_loggers", f"paths.output_dir={run}")
    assert set(cfg.logger) == {"tensorboard", "csv"}
    cfg = cfg_train("logger=mlflow", f"paths.output_dir={run}")
    continue_loggers(cfg, 3)
    assert cfg.logger.mlflow.get("run_id") is None
