"""``diffusion=edm`` end to end, in this process: a tiny class-conditional EDM run trains (its grids through DDPM's
sampler on the VP view), stores EDM's sections, and its checkpoint samples with EDM's and DDPM's samplers (guided),
evaluates with ``features=tiny`` and refuses ``metrics=nll`` in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddpm_lab import EDMDiffusion, load_model
from ddpm_lab.evaluate import main as evaluate_main
from ddpm_lab.sample import main as sample_main
from ddpm_lab.train import main as train_main
from helpers import TINY_TRAIN, write_image_folder
from mistakes import run_in_process


@pytest.mark.slow
def test_an_edm_run_samples_and_evaluates(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", n_per_class=12, size=16, classes=("cat", "dog"))
    argv = [*TINY_TRAIN, "dataset.root=images", "hydra.run.dir=run", "diffusion=edm", "conditioning=class"]
    outcome = run_in_process(train_main, [*argv, "trainer.max_steps=3"], tmp_path)
    assert outcome.status == 0, outcome.stderr[-3000:]
    model = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert isinstance(model.diffusion, EDMDiffusion) and type(model.sampler).__name__ == "EDMHeunSampler"
    assert model.config["schedule"]["name"] == "karras" and model.num_classes == 2
    assert (tmp_path / "run" / "samples" / "step_0000003.png").is_file()

    common = ["ckpt=run/checkpoints/last.ckpt", "gif_frames=2", "strip_n=2", "per_class=2", "guidance=2"]
    for name, sampler in (
        ("heun", ["sampler=edm_heun", "sampler.steps=3"]),
        ("ddim", ["sampler=ddim", "sampler.steps=3"]),
    ):
        outcome = run_in_process(sample_main, [*common, *sampler, f"hydra.run.dir={name}"], tmp_path)
        assert outcome.status == 0, outcome.stderr[-3000:]
        npz = np.load(tmp_path / name / "samples.npz")
        assert npz["arr_0"].shape == (4, 16, 16, 3) and npz["labels"].tolist() == [0, 0, 1, 1]

    evaluate = ["ckpt=run/checkpoints/last.ckpt", "n=8", "features=tiny", "paths.cache_dir=cache"]
    outcome = run_in_process(
        evaluate_main, [*evaluate, "sampler=edm_euler", "sampler.steps=4", "hydra.run.dir=eval"], tmp_path
    )
    assert outcome.status == 0, outcome.stderr[-3000:]
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert result["nfe"] == 4 and "EDMEulerSampler" in result["sampler"] and np.isfinite(result["fid"])

    outcome = run_in_process(evaluate_main, [*evaluate, "metrics=nll", "hydra.run.dir=nll"], tmp_path)
    assert outcome.status == 2 and "metrics=nll bounds DDPM's likelihood" in outcome.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "nll").exists()
