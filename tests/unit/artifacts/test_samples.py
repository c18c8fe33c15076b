"""The files samples become: grids (a named row per class), one PNG per image (a folder per class), the .npz of
OpenAI's evaluation suite, the reverse-process strip and GIF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_lab.artifacts.samples import (
    folder_names,
    grid_name,
    save_grid,
    save_images,
    save_npz,
    save_progression,
    save_reverse_gif,
    save_uint8_grid,
)
from ddpm_lab.diffusion.generate import Batch


def images(n: int = 4, size: int = 8) -> torch.Tensor:
    return torch.linspace(-1, 1, n * 3 * size * size).reshape(n, 3, size, size)


def test_class_names_become_safe_distinct_folder_names():
    assert folder_names(["cat", "sea lion", "../etc"]) == ["cat", "sea_lion", "etc"]
    assert folder_names(["a/b", "a b", "???"]) == ["000_a_b", "001_a_b", "class"]


def test_single_pngs_go_into_one_folder_or_a_folder_per_class(tmp_path: Path):
    save_images(images(), tmp_path / "flat")
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    save_images(images(), tmp_path / "by_class", torch.tensor([0, 0, 1, 1]), ["cat", "dog"])
    assert sorted(str(p.relative_to(tmp_path / "by_class")) for p in (tmp_path / "by_class").rglob("*.png")) == [
        "cat/00000.png",
        "cat/00001.png",
        "dog/00002.png",
        "dog/00003.png",
    ]
    with Image.open(tmp_path / "flat" / "00000.png") as png:
        assert png.size == (8, 8)


def test_a_grid_gets_a_named_row_per_class(tmp_path: Path):
    save_grid(images(), tmp_path / "plain.png")
    save_grid(images(), tmp_path / "rows.png", ["cat", "dog"])
    with Image.open(tmp_path / "plain.png") as plain, Image.open(tmp_path / "rows.png") as rows:
        assert plain.size == (2 * 10 + 2, 2 * 10 + 2) and rows.height > plain.height  # 2 x 2; rows enlarged for text


def test_the_npz_holds_nhwc_uint8_and_the_classes(tmp_path: Path):
    save_npz(images(), tmp_path / "plain.npz")
    save_npz(images(), tmp_path / "classes.npz", torch.tensor([1, 0, 1, 0]), None)
    plain, classes = np.load(tmp_path / "plain.npz"), np.load(tmp_path / "classes.npz")
    assert plain["arr_0"].shape == (4, 8, 8, 3) and plain["arr_0"].dtype == np.uint8 and set(plain) == {"arr_0"}
    assert classes["labels"].tolist() == [1, 0, 1, 0] and classes["class_names"].tolist() == []


def test_the_reverse_process_strip_and_gif_show_the_kept_steps_then_the_output(tmp_path: Path):
    batch = Batch(0, images(), kept={9: images(), 5: images() * 0.5})
    save_progression(batch, [9, 5], 2, "reverse process", tmp_path / "strip.png")
    save_reverse_gif(batch, [9, 5], 3, 20, tmp_path / "reverse.gif")
    with Image.open(tmp_path / "reverse.gif") as gif:
        assert gif.n_frames == 3
    with Image.open(tmp_path / "strip.png") as strip:
        assert strip.width > strip.height


def test_evaluate_grids_are_named_per_guidance_scale(tmp_path: Path):
    assert grid_name(None) == "samples.png" and grid_name(2.0) == "samples_guidance_2.png"
    assert grid_name(0.5) == "samples_guidance_0.5.png"
    save_uint8_grid(torch.full((70, 1, 4, 4), 255, dtype=torch.uint8), tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as grid:  # the first 64: 8 x 8 tiles of 4 px, 2 px apart
        assert grid.size == (8 * 6 + 2, 8 * 6 + 2)
