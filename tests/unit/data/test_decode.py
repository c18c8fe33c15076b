"""Decoding image files from a shared disk (data/decode.py): no decompression bomb, 16-bit images decoded right,
unreadable files skipped with a warning or stopping the run (dataset.on_error)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_helpers import folder_module
from ddpm_lab.data import DatasetError, ImageFolderDataModule
from ddpm_lab.data.decode import (
    MAX_ASPECT_RATIO,
    ImageSizeError,
    check_image_size,
    decode_image,
)
from helpers import write_image_folder


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


def write_bad_files(root: Path) -> None:
    png = (root / "a" / "001.png").read_bytes()
    (root / "a" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "b" / "text.jpg").write_text("this is not a JPEG")
    (root / "b" / "empty.png").write_bytes(b"")


def test_bad_files_skip_with_warning_or_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_image_folder(tmp_path / "imgs", n_per_class=6)
    write_bad_files(root)
    with caplog.at_level(logging.WARNING):
        dm = folder_module(root, on_error="skip")
    assert len(dm.train_images) == 12
    assert all(name in caplog.text for name in ("truncated.png", "text.jpg", "empty.png"))
    with pytest.raises(DatasetError, match=r"3 unreadable.*(truncated.png|text.jpg|empty.png).*on_error=skip"):
        folder_module(root, on_error="raise")
    with pytest.raises(ValueError, match="on_error"):
        ImageFolderDataModule(root=str(root), on_error="ignore")


def test_only_bad_files_stop_even_when_skipping(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="x.png"):
        folder_module(tmp_path, on_error="skip")
