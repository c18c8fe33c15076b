"""The decoded cache: a split's decoded uint8 images kept under ``<cache_dir>/decoded/``, named by a hash of
everything they depend on, so a dataset of files is decoded once, not on every run."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.data.decode import IMAGE_EXTENSIONS, decode_labelled, report_bad_files
from ddpm_lab.errors import DatasetError

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when decoding changes, so old caches are rebuilt (2: 16-bit images, content keys)


def cache_key(files: Sequence[Path], labels: Sequence[int], where: Path, image_size: int, channels: int) -> str:
    """A hash of everything the decoded tensor depends on: each file's contents (blake2b of its bytes, ~0.1 s for
    10k MNIST PNGs), its path below ``where`` and label, the size, the channels and the decoder version.

    Contents, not sizes and mtimes: a replaced image (same size, a copied-back mtime) is never served stale.
    """
    key = hashlib.blake2b(json.dumps([CACHE_VERSION, image_size, channels]).encode(), digest_size=16)
    prefix = str(where) + os.sep
    for file, label in zip(files, labels, strict=True):
        path = str(file)
        try:
            with open(path, "rb") as f:
                digest = hashlib.blake2b(f.read(), digest_size=16).hexdigest()
        except OSError as e:  # unreadable: decoding will report it; its error is part of what is cached
            digest = type(e).__name__
        name = path[len(prefix) :] if path.startswith(prefix) else path
        key.update(f"{name}\0{label}\0{digest}\n".encode())
    return key.hexdigest()[:24]


def cache_path(cache_dir: Path, where: Path, image_size: int, channels: int, key: str) -> Path:
    """The cache file for ``key``: readable names (folder, size, channels) for whoever cleans the folder."""
    return Path(cache_dir) / f"{where.name or 'images'}-{image_size}px-{channels}ch-{key}.pt"


def read_cache(cache: Path, key: str, image_size: int, channels: int) -> dict | None:
    """The decoded cache in ``cache`` when it is whole and made for ``key``; None (with a warning) when damaged."""
    try:
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        if not isinstance(stored, dict) or stored.get("key") != key:
            raise ValueError("it was not written for these files")
        images, labels, bad = stored.get("images"), stored.get("labels"), stored.get("bad")
        if not (
            isinstance(images, torch.Tensor)
            and images.dtype == torch.uint8
            and images.shape[1:] == (channels, image_size, image_size)
            and isinstance(labels, torch.Tensor)
            and labels.dtype == torch.long
            and labels.shape == (len(images),)
            and isinstance(bad, list)
            and all(isinstance(b, str) for b in bad)
        ):
            raise ValueError("its contents do not have the expected shapes and types")
    except Exception as e:  # truncated, foreign or edited: rebuild it, never a traceback on every later run
        log.warning("decoded cache %s is damaged (%s): decoding the images again and rewriting it", cache, e)
        return None
    return stored


def write_cache(cache: Path, key: str, images: torch.Tensor, labels: torch.Tensor, bad: list[str]) -> None:
    """Write the cache under a temporary name and rename it, so it is never half-written; a folder we cannot
    write to only costs decoding again next run."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache, durable=False) as tmp:
            torch.save({"key": key, "images": images, "labels": labels, "bad": bad}, tmp)
        log.info("wrote decoded cache %s (%.1f MB)", cache, images.numel() / 1e6)
    except OSError as e:  # a read-only cache folder: decode again next time
        log.warning("could not write the decoded cache %s (%s): it will be decoded again next run", cache, e)


def load_files(
    files: Sequence[Path],
    labels: Sequence[int],
    image_size: int,
    channels: int,
    on_error: str,
    where: Path,
    cache_dir: Path | None = None,
    cache_min_files: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``files`` once into (N, C, S, S) uint8 plus labels.

    With ``cache_dir`` set and at least ``cache_min_files`` files, the decoded tensor is kept in ``cache_dir``
    (a folder of ours, never the dataset's). The cache file is named by a hash of the files' contents, paths and
    labels, ``image_size`` and ``channels``, so any change makes a new one; it is written to a temporary name and
    renamed, so it is never half-written, and a damaged one is reported, decoded again and replaced.
    """
    if not files:
        raise DatasetError(
            f"{where} holds no images ({', '.join(IMAGE_EXTENSIONS)}): point dataset.root at a folder that does"
        )
    if cache_dir is None or len(files) < cache_min_files:
        return decode_labelled(files, labels, image_size, channels, on_error, where)[:2]
    key = cache_key(files, labels, where, image_size, channels)
    cache = cache_path(cache_dir, where, image_size, channels, key)
    stored = read_cache(cache, key, image_size, channels) if cache.is_file() else None
    if stored is not None:
        report_bad_files(stored["bad"], where, on_error, len(stored["images"]))
        log.info("decoded cache %s: %d images", cache, len(stored["images"]))
        return stored["images"], stored["labels"]
    images, targets, bad = decode_labelled(files, labels, image_size, channels, on_error, where)
    write_cache(cache, key, images, targets, bad)
    return images, targets
