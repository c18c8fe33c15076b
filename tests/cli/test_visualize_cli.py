"""``python -m ddpm_lab.visualize`` and the plotting helpers behind it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ddpm_lab.artifacts.figures import schedule_curves
from ddpm_lab.artifacts.images import refuse_existing
from ddpm_lab.diffusion.spacing import evenly_spaced, fit_timesteps
from helpers import run_cli


def test_fit_timesteps_rescales_and_snaps() -> None:
    seeds = [999, 800, 600, 400, 200, 100, 50, 0]
    assert fit_timesteps(seeds, 1000) == seeds
    assert fit_timesteps(seeds, 50) == [49, 39, 29, 20, 10, 5, 2, 0]
    visited = list(range(49, -1, -7))  # 49, 42, ..., 0
    assert fit_timesteps(seeds, 50, visited) == [49, 42, 28, 21, 7, 0]
    with pytest.raises(ValueError, match="empty"):
        fit_timesteps([], 50)


def test_evenly_spaced_keeps_both_ends() -> None:
    assert evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert evenly_spaced([5, 4], 8) == [5, 4]


def test_schedule_curves() -> None:
    betas = torch.full((10,), 0.1, dtype=torch.float64)
    curves = schedule_curves(betas)
    assert curves["alpha_bar"][-1] == pytest.approx(0.9**10)
    assert curves["sqrt_alpha_bar"][3] == pytest.approx(0.9**2)
    assert curves["log_snr"][0] == pytest.approx(torch.log(torch.tensor(0.9 / 0.1)).item())


def test_refuse_existing(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="a.png"):
        refuse_existing([tmp_path / "b.png", tmp_path / "a.png"])


@pytest.mark.slow
def test_visualize_cli(tmp_path: Path, image_folder: Path) -> None:
    proc = run_cli(
        "ddpm_lab.visualize",
        "dataset=image_folder",
        f"dataset.root={image_folder}",
        "dataset.image_size=16",
        "schedule=cosine",
        "schedule.timesteps=50",
        "n_images=2",
        "gif_frames=5",
        "paths.output_root=out",
        cwd=tmp_path,
    )
    printed = [Path(line) for line in proc.stdout.strip().splitlines()[-3:]]  # the paths come last
    (run,) = (tmp_path / "out" / "visualize").iterdir()
    assert sorted(p.name for p in printed) == ["forward.gif", "forward_strip.png", "schedules.png"]
    assert all(tmp_path / p == run / p.name for p in printed)
    for name in ("schedules.png", "forward_strip.png"):
        with Image.open(run / name) as image:
            image.load()
            assert image.width > 300 and image.height > 100
    with Image.open(run / "forward.gif") as gif:
        assert gif.n_frames == 5
        # two 16 px images with 2 px padding: 38 x 20, upscaled x7 to a short side >= 128
        assert gif.size == (38 * 7, 20 * 7)
