"""Post-hoc EMA checkpoints (artifacts/posthoc_ema.py) from a real run's snapshots: one per asked-for length, loadable
and sampled like any other checkpoint (this run also trained with augmentation on), a tracked length equal to its
tracked average, nothing overwritten; and the sweep report names the checkpoints it compares."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ddpm_lab.artifacts.checkpoint import is_training_checkpoint, read_checkpoint
from ddpm_lab.artifacts.posthoc_ema import STATE_KEY, write_posthoc_checkpoints
from ddpm_lab.artifacts.trained_model import load_model
from ddpm_lab.config.sweep_report import job_row, table
from ddpm_lab.diffusion import DDIMSampler, generate
from ddpm_lab.errors import OutputExistsError
from helpers import snapshot


@pytest.fixture(scope="module")
def outputs(posthoc_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A copy of the run (the shared one stays as it is) and its checkpoints of σ_rel 0.05, 0.10, 0.15 in the
    default place, ``<run>/posthoc_ema/``."""
    run = tmp_path_factory.mktemp("posthoc_outputs") / "run"
    shutil.copytree(posthoc_run, run)
    return run, write_posthoc_checkpoints(run / "checkpoints" / "last.ckpt", [0.05, 0.10, 0.15])


def test_one_checkpoint_per_length_next_to_the_snapshots(outputs):
    run, paths = outputs
    assert [p.name for p in paths] == [f"ema_{s}_step_0000004.ckpt" for s in ("0.05", "0.1", "0.15")]
    assert all(p.parent == run / "posthoc_ema" for p in paths)
    ckpt = read_checkpoint(paths[2])
    assert not is_training_checkpoint(ckpt) and ckpt["global_step"] == 4
    assert ckpt["posthoc_ema"]["sigma_rel"] == 0.15 and ckpt["posthoc_ema"]["snapshot_steps"] == [2, 4]
    assert 0 < ckpt["posthoc_ema"]["relative_error"] < 1


def test_a_tracked_length_is_its_tracked_average_and_raw_weights_stay_raw(outputs):
    run, paths = outputs
    source = read_checkpoint(run / "checkpoints" / "last.ckpt")
    tracked = source["callbacks"][STATE_KEY]["profiles"]  # σ_rel 0.05 and 0.10 at step 4
    for path, average in zip(paths[:2], tracked):
        net = load_model(path).net.state_dict()
        for name, tensor in net.items():
            torch.testing.assert_close(tensor, average[f"net.{name}"], rtol=0, atol=1e-6)
    between = load_model(paths[2]).net.state_dict()
    assert all(any(not torch.allclose(between[k], a[f"net.{k}"]) for k in between) for a in tracked)
    raw = load_model(paths[2], weights="raw").net.state_dict()
    assert all(torch.equal(raw[k], source["current_model_state"][f"net.{k}"]) for k in raw)


def test_the_checkpoint_of_an_augmented_run_samples_without_augmentation_labels(outputs):
    _, paths = outputs
    model = load_model(paths[2])
    assert model.net.augment_dim == 3 and "augment_emb.weight" in model.net.state_dict()
    seen = []
    forward = model.net.forward
    model.net.forward = lambda x, t, *args, **kwargs: seen.append((args, kwargs)) or forward(x, t, *args, **kwargs)
    images = generate(model.net, model.diffusion, 2, sampler=DDIMSampler(steps=3), seed=0)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert seen and all(not args and kwargs.get("augment_labels") is None for args, kwargs in seen)
    # no labels is the same as all-zero labels: the embedding has no bias
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 30])
    zeros = forward(x, t, augment_labels=torch.zeros(2, 3))
    assert torch.equal(forward(x, t), zeros) and not torch.equal(forward(x, t, augment_labels=torch.ones(2, 3)), zeros)


def test_nothing_is_overwritten(outputs):
    run, _ = outputs
    before = snapshot(run)
    with pytest.raises(OutputExistsError, match=r"ema_0.1_step_0000004.ckpt already exists: nothing was written"):
        write_posthoc_checkpoints(run / "checkpoints" / "last.ckpt", [0.2, 0.1])
    assert snapshot(run) == before


def test_a_sweep_over_checkpoints_names_each_by_its_file(tmp_path):
    rows = []
    for i, sigma in enumerate(("0.05", "0.1")):
        job = tmp_path / str(i)
        job.mkdir()
        (job / "results.json").write_text(json.dumps({"fid": 10 + i, "nfe": 50, "n_fake": 8}))
        rows.append(job_row(job, [f"ckpt='{tmp_path}/run/posthoc_ema/ema_{sigma}_step_0001350.ckpt'", "n=8"]))
    lines = table(rows)
    assert lines[0][:3] == ["ckpt", "nfe", "fid"]
    assert [line[0] for line in lines[1:]] == ["ema_0.05_step_0001350.ckpt", "ema_0.1_step_0001350.ckpt"]
    same_names = [dict(r, settings={"ckpt": f"/runs/{n}/checkpoints/last.ckpt"}) for r, n in zip(rows, "ab")]
    assert [line[0] for line in table(same_names)[1:]] == ["a/checkpoints/last.ckpt", "b/checkpoints/last.ckpt"]
