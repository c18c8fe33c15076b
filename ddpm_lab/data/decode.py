"""Image files to uint8 tensors: finding them, refusing absurd sizes, decoding on a thread pool, fitting the size."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from ddpm_lab.artifacts.classes import natural_order
from ddpm_lab.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
ON_ERROR = ("skip", "raise")
# Images we decode at most: 64 megapixels (8192×8192), proportions up to 32:1 (see check_image_size).
MAX_IMAGE_PIXELS = 1 << 26
MAX_ASPECT_RATIO = 32
# What PIL raises for broken files: truncated data (OSError), unknown format (UnidentifiedImageError, an OSError),
# corrupt chunks (SyntaxError), bad headers (ValueError, EOFError), absurd sizes (DecompressionBombError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def fit_images(images: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """Resize the shorter side to ``image_size``, center-crop square, convert to ``channels`` (uint8 in and out)."""
    if images.shape[1] != channels:
        if channels == 1:  # ITU-R 601-2 luma, as PIL's "L"
            images = TF.rgb_to_grayscale(images[:, :3])
        elif images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        else:
            images = images[:, :3]
    if images.shape[-2:] != (image_size, image_size):
        images = TF.resize(images, image_size, antialias=True)
        images = TF.center_crop(images, [image_size, image_size])
    return images.contiguous()


def list_image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (recursively, by extension), skipping hidden folders such as the cache."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(s.startswith(".") for s in p.relative_to(root).parts[:-1])
        and p.is_file()
    )


def index_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files under ``root``, their labels (index of the first sub-folder; −1 directly in ``root``), classes
    (the sub-folders in natural order: ``1, 2, …, 10``; the data module maps them to the run's class names)."""
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist: set dataset.root to a folder of images")
    files = list_image_files(root)
    classes = natural_order(f.relative_to(root).parts[0] for f in files if f.parent != root)
    class_index = {c: i for i, c in enumerate(classes)}
    labels = [class_index[f.relative_to(root).parts[0]] if f.parent != root else -1 for f in files]
    return files, labels, classes


def folder_class_names(root: Path) -> list[str] | None:
    """The class sub-folders of ``root``, ordered as :func:`index_image_folder` numbers them; None: no classes."""
    return index_image_folder(root)[2] or None


class ImageSizeError(ValueError):
    """An image whose header announces a size we refuse to decode (a decompression bomb, or absurd proportions)."""


def check_image_size(width: int, height: int) -> None:
    """Refuse, from the header alone, images whose decoding or resizing would cost absurd memory.

    A 300000×1 PNG is a few hundred bytes, but resizing its shorter side to S makes a 300000·S × S image.
    """
    if width < 1 or height < 1:
        raise ImageSizeError(f"{width}×{height} pixels: empty image")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageSizeError(
            f"{width}×{height} pixels, over the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels we decode "
            "(a decompression bomb?)"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageSizeError(
            f"{width}×{height} pixels: proportions over {MAX_ASPECT_RATIO}:1 cannot be resized and center-cropped "
            "to a square"
        )


def _sixteen_bit_to_8(im: Image.Image) -> Image.Image:
    """A 16-bit (``I;16*``) or 32-bit integer (``I``, how some readers return 16-bit data) grey image as ``L``,
    scaled from the 16-bit range (PIL's own ``convert("L")`` clips everything above 255 to white)."""
    values = np.asarray(im).astype(np.int64)
    return Image.fromarray(((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8), mode="L")


def decode_image(path: str | Path, image_size: int, channels: int) -> np.ndarray:
    """One file → (S, S, C) uint8: shorter side resized to S (bicubic), center-cropped, converted to L or RGB.

    The size in the header is checked first (:func:`check_image_size`); 16-bit grey images are scaled to 8 bits.
    """
    mode = "L" if channels == 1 else "RGB"
    with Image.open(path) as im:
        check_image_size(*im.size)
        if im.format == "JPEG":  # let libjpeg decode at 1/2, 1/4 or 1/8 scale while staying >= S: much faster
            im.draft(mode, (image_size, image_size))
        if im.mode.startswith("I;16") or im.mode == "I":
            im = _sixteen_bit_to_8(im)
        im = im.convert(mode)
        w, h = im.size
        if min(w, h) != image_size:
            scale = image_size / min(w, h)
            size = (max(image_size, round(w * scale)), max(image_size, round(h * scale)))
            im = im.resize(size, Image.BICUBIC, reducing_gap=3.0)
        w, h = im.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        # numpy, not pil_to_tensor: the per-image torch overhead was most of the decode time for small images
        array = np.asarray(im)[top : top + image_size, left : left + image_size]
    return array.reshape(image_size, image_size, channels)


def _describe(bad: Sequence[str]) -> str:
    return "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")


def report_bad_files(bad: Sequence[str], where: Path, on_error: str, kept: int) -> None:
    """Apply ``dataset.on_error`` to unreadable files: warn and go on (``skip``), or stop naming them (``raise``)."""
    if not bad:
        return
    if on_error == "raise" or kept == 0:
        raise DatasetError(
            f"{len(bad)} unreadable image(s) under {where}: {_describe(bad)}. Remove or fix them"
            + (", or set dataset.on_error=skip to leave them out" if kept else "")
        )
    log.warning("skipped %d unreadable image(s) under %s: %s", len(bad), where, _describe(bad))


def decode_files(
    files: Sequence[Path], image_size: int, channels: int, workers: int | None = None
) -> tuple[torch.Tensor, list[int], list[str]]:
    """Decode ``files`` on a thread pool (PIL releases the GIL while decoding).

    Returns the (K, C, S, S) uint8 images that decoded, their positions in ``files``, and one
    ``"path (Error: message)"`` line per file that did not.
    """
    workers = workers or min(8, (os.cpu_count() or 1) + 2)

    def one(path: Path) -> np.ndarray | str:
        try:
            return decode_image(path, image_size, channels)
        except DECODE_ERRORS as e:
            return f"{path} ({type(e).__name__}: {e})"

    out = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    kept: list[int] = []
    bad: list[str] = []
    with ThreadPoolExecutor(workers) as pool:
        for i, result in enumerate(pool.map(one, files, chunksize=64)):
            if isinstance(result, str):
                bad.append(result)
            else:
                out[len(kept)] = result
                kept.append(i)
    return torch.from_numpy(out[: len(kept)]).permute(0, 3, 1, 2).contiguous(), kept, bad


def decode_labelled(
    files: Sequence[Path], labels: Sequence[int], image_size: int, channels: int, on_error: str, where: Path
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """:func:`decode_files` with ``dataset.on_error`` applied: (K, C, S, S) images, the labels of the files that
    decoded, and the unreadable ones (see :func:`report_bad_files`). No files at all is a DatasetError."""
    if not files:
        raise DatasetError(
            f"{where} holds no images ({', '.join(IMAGE_EXTENSIONS)}): point dataset.root at a folder that does"
        )
    images, kept, bad = decode_files(files, image_size, channels)
    report_bad_files(bad, where, on_error, len(kept))
    targets = torch.as_tensor(labels, dtype=torch.long)[torch.as_tensor(kept, dtype=torch.long)]
    return images, targets, bad
