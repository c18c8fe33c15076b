"""Every file ddpm_lab writes is complete or absent: a failed write leaves the previous file as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddpm_lab.artifacts.atomic import atomic_write, remove_stale_temp_files, temp_path
from ddpm_lab.artifacts.images import image_grid, save_gif, save_png


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_write_creates_folders_and_replaces(tmp_path: Path):
    path = tmp_path / "a" / "b" / "file.txt"
    with atomic_write(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".file.txt.tmp-")
        tmp.write_text("new")
    assert path.read_text() == "new" and not tmp.exists()


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path: Path):
    keep = tmp_path / "last.ckpt"
    keep.write_bytes(b"ckpt")
    stale = temp_path(keep)
    stale.write_bytes(b"partial")
    remove_stale_temp_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_pictures_are_written_through_the_same_helper(tmp_path: Path):
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    png = save_png(image_grid(images), tmp_path / "grid.png")
    gif = save_gif([image_grid(images), image_grid(-images)], tmp_path / "x.gif")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and gif.read_bytes()[:6] == b"GIF89a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "x.gif"]
