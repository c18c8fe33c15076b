"""Several loggers at once, for real: ``python -m ddpm_lab.train logger=[tensorboard,csv,mlflow]`` on a tiny run.
Scalars reach all three, images (sample grids, strips, the schedule figure) reach the two that show images, the
config reaches MLflow."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ddpm_lab.train import main
from helpers import TINY_TRAIN, snapshot
from mistakes import run_in_process

mlflow = pytest.importorskip("mlflow", reason="logger=mlflow needs the mlflow extra (mlflow-skinny is in [dev])")

pytestmark = pytest.mark.slow
IMAGE_TAGS = ("samples/grid", "diffusion/x0_pred", "diffusion/denoising")
SIDE = lambda k: 18 * k + 2  # 16 px images, 2 px padding


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> Path:
    """The training command, run in this process (its imports are paid already)."""
    cwd = tmp_path_factory.mktemp("loggers")
    argv = [*TINY_TRAIN, f"dataset.root={image_folder}", "hydra.run.dir=run", "logger=[tensorboard,csv,mlflow]"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # so that the context removes it again afterwards
        env.delenv("MLFLOW_ALLOW_FILE_STORE")  # absent during the run: the logger itself must allow its file store
        outcome = run_in_process(main, argv, cwd)
    assert outcome.status == 0, outcome.stderr[-3000:]
    return cwd / "run"


def test_csv_has_every_scalar_and_the_hyperparameters(run: Path) -> None:
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    losses = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    assert sorted(losses) == list(range(6)) and all(0 < v < 10 for v in losses.values())
    assert [int(r["step"]) for r in rows if r.get("val/loss")] == [2, 5]  # validation at steps 3 and 6
    assert any(r.get("lr") for r in rows) and any(r.get("train/grad_norm") for r in rows)
    hparams = (run / "csv" / "hparams.yaml").read_text()
    assert "schedule/timesteps: 50" in hparams and "choice/model: unet_tiny" in hparams


def test_mlflow_run_has_metrics_images_and_config(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads file stores only when asked to
    client = mlflow.tracking.MlflowClient(f"file:{run / 'mlruns'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "ddpm_lab"]
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert len(client.get_metric_history(mlrun.info.run_id, "train/loss")) == 6
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "val/loss")] == [2, 5]
    assert mlrun.data.params["schedule/timesteps"] == "50"
    store = Path(mlrun.info.artifact_uri.removeprefix("file://").removeprefix("file:"))
    for tag in IMAGE_TAGS:
        assert sorted(p.name for p in (store / tag).glob("*.png")) == ["step_0000003.png", "step_0000006.png"], tag
    assert [p.name for p in (store / "diffusion/forward").glob("*.png")] == ["step_0000003.png"]
    assert Image.open(store / "samples/grid/step_0000006.png").size == (SIDE(2), SIDE(2))  # 4 samples, 2 x 2
    assert Image.open(store / "diffusion/x0_pred/step_0000003.png").size == (SIDE(8), SIDE(4))
    assert Image.open(store / "schedule/step_0000000.png").size[0] > 400
    config = (store / "config.yaml").read_text()
    assert "timesteps: 50" in config and "${" not in config


def test_tensorboard_gets_the_same_images_beside_them(run: Path) -> None:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    for tag in IMAGE_TAGS:
        assert [e.step for e in events.Images(tag)] == [3, 6], tag
    grid = events.Images("samples/grid")[-1]
    assert Image.open(io.BytesIO(grid.encoded_image_string)).size == (SIDE(2), SIDE(2))


def test_a_run_with_a_list_of_loggers_resumes(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replayed ``logger=[...]`` list composes again and every logger goes on. A copy of the run (its MLflow
    store still keeps artifacts in the original) is refused first, in one line, changing neither run."""
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    before, original = snapshot(copy), snapshot(run)
    outcome = run_in_process(main, [f"resume={copy}", "trainer.max_steps=8"], tmp_path)
    lines = outcome.stderr.strip().splitlines()
    assert outcome.status == 2 and lines[-1].startswith("error: ") and "Traceback" not in outcome.stderr, lines
    assert "is outside this run's MLflow store" in lines[-1] and "remove mlruns/ from this copy" in lines[-1]
    assert snapshot(copy) == before and snapshot(run) == original
    shutil.rmtree(copy / "mlruns")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    outcome = run_in_process(main, [f"resume={copy}", "trainer.max_steps=8"], tmp_path)
    assert outcome.status == 0, outcome.stderr[-3000:]
    resumed = list(csv.DictReader((copy / "csv" / "resume_1" / "metrics.csv").open()))
    assert sorted(int(r["step"]) for r in resumed if r.get("train/loss")) == [6, 7]
    events = EventAccumulator(str(copy / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert {6, 7} <= set(steps) and len(steps) == len(set(steps)), steps  # the curve goes on, nothing twice
    assert any((copy / "mlruns").rglob("meta.yaml")) and snapshot(run) == original
