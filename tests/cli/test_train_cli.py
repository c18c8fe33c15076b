"""`python -m ddpm_lab.train` end to end on a tiny image folder: checkpoints, TensorBoard, samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ddpm_lab.artifacts.trained_model import load_model
from helpers import TINY_TRAIN, run_cli


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob(".hydra") if p.is_dir())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> Path:
    out = tmp_path_factory.mktemp("out")
    run_cli("ddpm_lab.train", *TINY_TRAIN, f"dataset.root={image_folder}", f"paths.output_root={out}", cwd=out)
    (run,) = run_dirs(out)
    return run


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_run_folder_layout(tiny_run: Path):
    assert (tiny_run / ".hydra" / "config.yaml").is_file()
    assert (tiny_run / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (tiny_run / "checkpoints").glob("step_*.ckpt")) == [
        "step_0000003.ckpt",
        "step_0000006.ckpt",
    ]
    assert sorted(p.name for p in (tiny_run / "samples").glob("*.png")) == ["step_0000003.png", "step_0000006.png"]
    assert "debug-default" in tiny_run.name  # readable run names from the overrides


def test_tensorboard_has_loss_and_sample_grid(tiny_run: Path):
    acc = events(tiny_run)
    tags = acc.Tags()
    losses = acc.Scalars("train/loss")
    assert len(losses) >= 3 and all(0 < e.value < 10 for e in losses)
    assert [e.step for e in acc.Scalars("val/loss")]
    grids = acc.Images("samples/grid")
    assert [g.step for g in grids] == [3, 6]
    assert grids[0].width > 16 and grids[0].height > 16
    assert "lr" in " ".join(tags["scalars"])


def test_checkpoint_alone_rebuilds_model_and_samples_reproducibly(tiny_run: Path):
    loaded = load_model(tiny_run / "checkpoints" / "last.ckpt")
    assert loaded.global_step == 6
    assert loaded.diffusion.num_timesteps == 50
    shape = (3, loaded.net.in_channels, loaded.net.image_size, loaded.net.image_size)
    a = loaded.diffusion.sample(loaded.net, shape, loaded.sampler, generator=torch.Generator().manual_seed(7))
    b = loaded.diffusion.sample(loaded.net, shape, loaded.sampler, generator=torch.Generator().manual_seed(7))
    c = loaded.diffusion.sample(loaded.net, shape, loaded.sampler, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, 3, 16, 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_multirun_gives_each_job_its_own_folder(tmp_path: Path, image_folder: Path):
    overrides = [o for o in TINY_TRAIN if not o.startswith("trainer.max_steps")]
    run_cli(
        "ddpm_lab.train",
        "-m",
        *overrides,
        "trainer.max_steps=2",
        "callbacks.sample_grid.every_n_steps=0",
        f"dataset.root={image_folder}",
        f"paths.output_root={tmp_path}",
        "schedule=linear,cosine",
        cwd=tmp_path,
    )
    runs = run_dirs(tmp_path / "multirun")
    assert len(runs) == 2
    assert {r.name.split("_", 1)[0] for r in runs} == {"0", "1"}
    assert any("schedule-cosine" in r.name for r in runs) and any("schedule-linear" in r.name for r in runs)
    for r in runs:
        assert (r / "checkpoints" / "last.ckpt").is_file()
        assert list((r / "tensorboard").glob("events.out.tfevents.*"))
