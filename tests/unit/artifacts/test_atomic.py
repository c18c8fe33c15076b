"""Every file ddpm_lab writes is complete or absent: a failed write leaves the previous file as it was."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from ddpm_lab.artifacts import atomic
from ddpm_lab.artifacts.atomic import atomic_write, publish_new, remove_stale_temp_files, temp_path
from ddpm_lab.artifacts.images import image_grid, save_gif, save_png
from ddpm_lab.errors import OutputExistsError


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


def test_a_new_file_never_replaces_one_that_appeared_while_it_was_written(tmp_path: Path):
    """``atomic_write(new=True)``: the check before any work and the naming in one step (a hard link fails on a
    taken name): two writers of one new name never replace each other's file."""
    path = tmp_path / "model.ckpt"
    with (
        pytest.raises(OutputExistsError, match="another process wrote it meanwhile"),
        atomic_write(path, new=True) as tmp,
    ):
        tmp.write_bytes(b"ours")
        path.write_bytes(b"theirs, finished first")
    assert path.read_bytes() == b"theirs, finished first" and [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]
    with atomic_write(tmp_path / "new.ckpt", new=True) as tmp:
        tmp.write_bytes(b"ours")
    assert (tmp_path / "new.ckpt").read_bytes() == b"ours" and len(list(tmp_path.iterdir())) == 2


def test_without_hard_links_the_name_is_claimed_exclusively(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def no_links(src, dst) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_links)
    (tmp_path / "taken").write_bytes(b"theirs")
    for name, outcome in [("free", b"ours"), ("taken", b"theirs")]:
        tmp = temp_path(tmp_path / name)
        tmp.write_bytes(b"ours")
        if name == "taken":
            with pytest.raises(OutputExistsError):
                publish_new(tmp, tmp_path / name)
        else:
            publish_new(tmp, tmp_path / name)
        assert (tmp_path / name).read_bytes() == outcome and not tmp.exists()


def test_a_new_folder_takes_its_name_only_from_nothing_or_an_empty_folder(tmp_path: Path):
    for target, before in [("missing", None), ("empty", "dir"), ("full", "file in it"), ("a_file", "file")]:
        path = tmp_path / target
        if before == "dir":
            path.mkdir()
        elif before == "file in it":
            path.mkdir()
            (path / "theirs.txt").write_text("theirs")
        elif before == "file":
            path.write_text("theirs")
        tmp = temp_path(path)
        tmp.mkdir()
        (tmp / "ours.txt").write_text("ours")
        if before in ("file in it", "file"):
            with pytest.raises(OutputExistsError):
                publish_new(tmp, path)
            assert (path / "theirs.txt" if path.is_dir() else path).read_text() == "theirs"
        else:
            publish_new(tmp, path)
            assert (path / "ours.txt").read_text() == "ours"


def test_temp_names_are_fresh_so_a_killed_writers_leftover_is_ignored(tmp_path: Path):
    path = tmp_path / "out.ckpt"
    assert temp_path(path) != temp_path(path)
    leftover = temp_path(path)
    leftover.write_bytes(b"left by kill -9")
    with atomic_write(path, new=True) as tmp:
        assert tmp != leftover
        tmp.write_bytes(b"complete")
    assert path.read_bytes() == b"complete" and leftover.read_bytes() == b"left by kill -9"
