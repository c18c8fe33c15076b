"""The decoded cache (data/decoded_cache.py): used and keyed on the files, a damaged one rebuilt with a warning, a
replaced image never served stale, only in our own cache folder."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_helpers import folder_module
from ddpm_lab.artifacts.cache_dir import cache_folder, default_cache_dir
from helpers import write_image_folder


def test_image_folder_cache_is_used_and_keyed(tmp_path: Path) -> None:
    root, cache = write_image_folder(tmp_path / "imgs", n_per_class=4), tmp_path / "cache"
    first = folder_module(root, cache_min_files=0, cache_dir=str(cache))
    assert len(list((cache / "decoded").glob("*.pt"))) == 1
    (root / "a" / "000.png").unlink()
    second = folder_module(root, cache_min_files=0, cache_dir=str(cache))
    assert len(second.train_images) == len(first.train_images) - 1
    assert len(list((cache / "decoded").glob("*.pt"))) == 2
    folder_module(root, cache_min_files=100, cache_dir=str(cache))  # below the threshold: no cache
    assert len(list((cache / "decoded").glob("*.pt"))) == 2
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # nothing of ours in the dataset folder


def test_a_damaged_decoded_cache_is_reported_rebuilt_and_fine_next_time(tmp_path: Path, caplog):
    root, cache = write_image_folder(tmp_path / "imgs", n_per_class=3), tmp_path / "cache"
    first = folder_module(root, cache_min_files=0, cache_dir=str(cache))
    (entry,) = (cache / "decoded").glob("*.pt")
    for damage in (entry.read_bytes()[:100], b"garbage", None):
        if damage is None:  # a whole file with the wrong contents
            torch.save({"images": torch.zeros(2, 3), "labels": torch.zeros(2), "bad": []}, entry)
        else:
            entry.write_bytes(damage)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again = folder_module(root, cache_min_files=0, cache_dir=str(cache))
        assert torch.equal(again.train_images, first.train_images)
        assert f"decoded cache {entry} is damaged" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            folder_module(root, cache_min_files=0, cache_dir=str(cache))
        assert "damaged" not in caplog.text  # rewritten: the warning does not repeat every run


def test_a_replaced_image_with_the_same_size_and_mtime_is_not_served_stale(tmp_path: Path):
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # BMP: a changed pixel keeps the file's size exactly
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.bmp")
    first = folder_module(root, cache_min_files=0, cache_dir=str(cache))
    target = root / "1.bmp"
    st = target.stat()
    pixels = np.asarray(Image.open(target)).copy()
    pixels[4:12, 4:12] = 255 - pixels[4:12, 4:12]
    Image.fromarray(pixels).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # as a copy tool that keeps times would
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    second = folder_module(root, cache_min_files=0, cache_dir=str(cache))
    fresh = folder_module(root, cache_min_files=None)  # no cache at all
    assert not torch.equal(first.train_images, fresh.train_images)
    assert torch.equal(second.train_images, fresh.train_images)  # decoded again, not the stale entry
    assert len(list((cache / "decoded").glob("*.pt"))) == 2


def test_the_default_cache_folder_is_ours(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ddpm_lab" == cache_folder(None)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid per the XDG spec: ignored
    assert default_cache_dir() == Path.home() / ".cache" / "ddpm_lab"
    assert cache_folder("~/x") == Path.home() / "x"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = write_image_folder(tmp_path / "imgs", n_per_class=2, classes=("a",))
    started = time.time()
    folder_module(root, cache_min_files=0)  # paths.cache_dir: null
    (entry,) = (tmp_path / "xdg" / "ddpm_lab" / "decoded").glob("*.pt")
    assert entry.stat().st_mtime >= started - 1
