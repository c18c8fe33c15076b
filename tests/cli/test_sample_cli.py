"""``python -m ddpm_lab.sample ckpt=PATH`` on a tiny checkpoint: every promised file, with the right size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ddpm_lab.config.settings import sample_settings as check
from helpers import run_cli


@pytest.mark.slow
def test_sample_cli(tmp_path: Path, tiny_run: Path) -> None:
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    overrides = (
        f"ckpt='{ckpt}'",
        "n=5",
        "batch_size=3",
        "sampler=ddpm",
        "sampler.steps=10",
        "strip_n=2",
        "gif_n=3",
        "gif_frames=4",
        "paths.output_root=out",
    )
    proc = run_cli("ddpm_lab.sample", *overrides, cwd=tmp_path)
    (run,) = (tmp_path / "out" / "sample").iterdir()
    assert sorted(Path(line).name for line in proc.stdout.strip().splitlines()[-5:]) == sorted(
        ["grid.png", "samples", "samples.npz", "progression.png", "reverse.gif"]
    )

    with Image.open(run / "grid.png") as grid:  # 5 samples of 16 px: 3 per row, 2 rows, 2 px padding
        assert grid.size == (3 * 18 + 2, 2 * 18 + 2) and grid.mode == "RGB"
    singles = sorted((run / "samples").glob("*.png"))
    assert [p.name for p in singles] == [f"{i:05d}.png" for i in range(5)]
    for path in singles:
        with Image.open(path) as image:
            assert image.size == (16, 16)
    arrays = np.load(run / "samples.npz")
    assert arrays["arr_0"].shape == (5, 16, 16, 3) and arrays["arr_0"].dtype == np.uint8
    with Image.open(singles[4]) as last:  # the npz and the PNGs hold the same pictures, in order
        assert np.array_equal(np.asarray(last.convert("RGB")), arrays["arr_0"][4])
    with Image.open(run / "progression.png") as strip:
        strip.load()
        assert strip.width > strip.height > 100
    with Image.open(run / "reverse.gif") as gif:
        assert gif.n_frames == 4  # 3 chosen steps + the output


@pytest.mark.slow
def test_samples_do_not_depend_on_the_batch_size_or_on_n(tmp_path: Path, tiny_run: Path) -> None:
    """Every image has its own seed: n=6 at batch 6 and at batch 4, and the first 6 of n=7 at batch 2, are one set."""
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    arrays = []
    for n, batch_size in ((6, 6), (6, 4), (7, 2)):
        out = f"out_{n}_{batch_size}"
        run_cli(
            "ddpm_lab.sample",
            f"ckpt='{ckpt}'",
            f"n={n}",
            f"batch_size={batch_size}",
            "sampler=ddpm",
            "sampler.steps=8",
            f"paths.output_root={out}",
            cwd=tmp_path,
        )
        (run,) = (tmp_path / out / "sample").iterdir()
        arrays.append(np.load(run / "samples.npz")["arr_0"])
    assert np.array_equal(arrays[0], arrays[1]) and np.array_equal(arrays[0], arrays[2][:6])
    assert len({a.tobytes() for a in arrays[0]}) == 6  # six different images


def test_bad_settings_are_refused_before_loading(cfg_sample) -> None:
    check(cfg_sample("ckpt=unused.ckpt"))  # the shipped defaults pass
    with pytest.raises(ValueError, match="batch_size must be an integer, got 2.5"):
        check(cfg_sample("ckpt=unused.ckpt", "batch_size=2.5"))
    base = {
        "n": 4,
        "batch_size": 2,
        "strip_n": 1,
        "gif_n": 1,
        "gif_frames": 2,
        "gif_ms": 10,
        "weights": "auto",
        "seed": 0,
        "timesteps": [10, 0],
        "device": "cpu",
        "devices": 1,
        "num_nodes": 1,
        "paths": {"output_root": "outputs"},
    }
    check(OmegaConf.create(base))
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        check(OmegaConf.create({**base, "n": 0}))
    with pytest.raises(ValueError, match="weights must be one of"):
        check(OmegaConf.create({**base, "weights": "best"}))
    with pytest.raises(ValueError, match="seed must be an integer"):
        check(OmegaConf.create({**base, "seed": "abc"}))
