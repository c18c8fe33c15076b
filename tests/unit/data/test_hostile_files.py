"""Images and decoded caches from a shared disk: no decompression bomb, 16-bit images decoded right, a damaged
cache rebuilt with a warning, a replaced image never served stale, caches only in our own cache folder."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from ddpm_lab.artifacts.cache_dir import cache_folder, default_cache_dir
from ddpm_lab.data import DatasetError, ImageFolderDataModule
from ddpm_lab.data.sources import (
    MAX_ASPECT_RATIO,
    ImageSizeError,
    check_image_size,
    decode_image,
)


def folder_module(root: Path, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root=str(root), **{"image_size": 16, "val_size": 0, "batch_size": 4, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_a_tiny_png_of_absurd_size_is_refused_from_its_header(tmp_path: Path):
    bomb = tmp_path / "bomb.png"
    Image.new("L", (300_000, 1)).save(bomb)
    assert bomb.stat().st_size < 2000
    started = time.perf_counter()
    with pytest.raises(ImageSizeError, match="300000×1 pixels: proportions over 32:1"):
        decode_image(bomb, 28, 3)  # refused from the header: no 8.4M×28 resize (2.2 GB before)
    assert time.perf_counter() - started < 0.5
    with pytest.raises(ImageSizeError, match="megapixels"):
        check_image_size(20_000, 20_000)
    check_image_size(MAX_ASPECT_RATIO * 10, 10)  # a wide but sane image passes


def test_dataset_on_error_handles_a_bomb_like_any_unreadable_file(tmp_path: Path, caplog):
    root = write_image_folder(tmp_path / "imgs", n_per_class=3, classes=("a",))
    Image.new("RGB", (1, 200_000)).save(root / "a" / "tall.png")
    with caplog.at_level(logging.WARNING):
        dm = folder_module(root, cache_min_files=None)
    assert len(dm.train_images) == 3 and "tall.png (ImageSizeError: 1×200000 pixels" in caplog.text
    with pytest.raises(DatasetError, match=r"tall.png \(ImageSizeError"):
        folder_module(root, cache_min_files=None, on_error="raise")


def test_16_bit_png_is_scaled_to_8_bit_not_clipped_to_white(tmp_path: Path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16")
    expected = ((ramp.astype(np.int64) + 128) // 257).astype(np.uint8)
    gray = decode_image(path, 32, 1)[..., 0]
    assert np.abs(gray.astype(int) - expected).max() <= 1 and gray.min() == 0 and gray.max() == 255
    assert 120 < gray.mean() < 135  # a ramp, not white (the old decode averaged ~254)
    rgb = decode_image(path, 32, 3)
    assert np.array_equal(rgb[..., 0], gray) and np.array_equal(rgb[..., 2], gray)


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
