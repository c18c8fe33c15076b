"""``conditioning=class`` end to end, in this process: a tiny conditional run stores its classes, draws a named
row per class and a guidance strip, and ``sample`` answers ``class=``/``per_class=``/``guidance=`` with named
grids, per-class folders and labels in samples.npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddpm_lab import load_model
from ddpm_lab.sample import main as sample_main
from ddpm_lab.train import main as train_main
from helpers import TINY_TRAIN, write_image_folder
from mistakes import run_in_process


@pytest.mark.slow
def test_a_conditional_run_and_its_samples(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", n_per_class=12, size=16, classes=("cat", "dog", "owl"))
    argv = [*TINY_TRAIN, "dataset.root=images", "hydra.run.dir=run", "conditioning=class", "trainer.max_steps=3"]
    outcome = run_in_process(train_main, argv, tmp_path)
    assert outcome.status == 0, outcome.stderr[-3000:]
    run = tmp_path / "run"
    model = load_model(run / "checkpoints" / "last.ckpt")
    assert (model.num_classes, model.class_names, model.class_index("owl")) == (3, ["cat", "dog", "owl"], 2)
    assert model.config["model"]["num_classes"] == 3
    assert {p.name for p in (run / "samples").iterdir()} == {"step_0000003.png", "guidance_0000003.png"}

    common = ["ckpt=run/checkpoints/last.ckpt", "sampler=ddim", "sampler.steps=3", "gif_frames=2", "strip_n=2"]
    outcome = run_in_process(sample_main, [*common, "per_class=2", "guidance=2", "hydra.run.dir=per_class"], tmp_path)
    assert outcome.status == 0, outcome.stderr[-3000:]
    out = tmp_path / "per_class"
    assert {p.name: len(list(p.iterdir())) for p in (out / "samples").iterdir()} == {"cat": 2, "dog": 2, "owl": 2}
    npz = np.load(out / "samples.npz")
    assert npz["arr_0"].shape == (6, 16, 16, 3)
    assert npz["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    assert npz["class_names"].tolist() == ["cat", "dog", "owl"]
    assert (out / "grid.png").is_file()

    outcome = run_in_process(sample_main, [*common, "class=dog", "n=3", "guidance=3", "hydra.run.dir=one"], tmp_path)
    assert outcome.status == 0, outcome.stderr[-3000:]
    assert np.load(tmp_path / "one" / "samples.npz")["labels"].tolist() == [1, 1, 1]
    assert len(list((tmp_path / "one" / "samples").glob("*.png"))) == 3
