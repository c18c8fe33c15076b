"""The decoded cache: one split of a dataset, decoded to uint8 at the size it is served at, in one file under
``<cache_dir>/decoded/`` that every process of the machine memory-maps, so its pages live once in the OS page cache
however many ranks train from it. The file is named by a hash of everything it depends on (the source files'
contents, labels, size, channels), written once by the first process to take its lock; the others wait on the lock,
then map the finished file.

The file is untrusted input: a fixed magic, a JSON header (bounded, every field checked), the images as raw
(N, C, S, S) uint8 at a page-aligned offset, then the labels as little-endian int64 whose hash the header holds.
A file that fails any check is reported, decoded again and replaced, never read.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.errors import DatasetError, first_line

log = logging.getLogger(__name__)

# Bump when decoding changes, so old caches are rebuilt (2: 16-bit images, content keys; 3: one memory-mapped file
# per split). Files of format 2 were ``.pt``: they are never read any more (see ``old_caches``).
CACHE_VERSION = 3
SUFFIX = ".u8"
MAGIC = b"DDPM-U8\n"
PAGE = 4096  # the images start on a page boundary, so mapping them maps whole pages
MAX_HEADER = 64 << 20  # a header above this is not one we wrote (it holds at most the unreadable files' names)
HEADER_KEYS = {"version", "key", "count", "channels", "image_size", "labels", "bad"}


@dataclass
class Decoded:
    """A split's images (N, C, S, S) uint8 (memory-mapped when read from the cache), labels (N,) int64 (−1:
    unlabelled), and one ``"path (Error: message)"`` line per source file that did not decode."""

    images: torch.Tensor
    labels: torch.Tensor
    bad: list[str] = field(default_factory=list)


def file_digest(path: Path) -> str:
    """blake2b of a file's bytes (~0.1 s for 10k MNIST PNGs); an unreadable file's error name instead, so that
    decoding reports it and what is cached depends on it."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    except OSError as e:
        return type(e).__name__
    return digest.hexdigest()


def cache_key(description: dict, files: Sequence[Path], labels: Sequence[int] | None, where: Path) -> str:
    """A hash of everything a split's decoded images depend on: ``description`` (size, channels, dataset, split, the
    decoder version), and each source file's contents, its path below ``where`` and its label.

    Contents, not sizes and mtimes: a replaced image (same size, a copied-back mtime) is never served stale.
    """
    key = hashlib.blake2b(json.dumps([CACHE_VERSION, description], sort_keys=True).encode(), digest_size=16)
    prefix = str(where) + os.sep
    for i, file in enumerate(files):
        path = str(file)
        name = path[len(prefix) :] if path.startswith(prefix) else path
        label = "-" if labels is None else labels[i]
        key.update(f"{name}\0{label}\0{file_digest(file)}\n".encode())
    return key.hexdigest()[:24]


def cache_path(cache_dir: Path, name: str, image_size: int, channels: int, key: str) -> Path:
    """The cache file for ``key``: readable names (dataset or folder, size, channels) for whoever cleans the folder."""
    return Path(cache_dir) / f"{name or 'images'}-{image_size}px-{channels}ch-{key}{SUFFIX}"


def _align(offset: int, to: int) -> int:
    return -(-offset // to) * to


def _labels_digest(labels: np.ndarray) -> str:
    return hashlib.blake2b(labels.astype("<i8").tobytes(), digest_size=16).hexdigest()


def _offsets(header_length: int, count: int, channels: int, image_size: int) -> tuple[int, int]:
    """Where the images (a page boundary after the header) and the labels (8-aligned after the images) start."""
    images = _align(len(MAGIC) + 8 + header_length, PAGE)
    return images, _align(images + count * channels * image_size * image_size, 8)


def write_cache(path: Path, key: str, decoded: Decoded) -> bool:
    """Write ``decoded`` under a temporary name and rename it, so the file is never half-written. Returns False
    (after a warning) when the folder cannot be written: that only costs decoding again next run."""
    images = decoded.images.contiguous()
    labels = decoded.labels.numpy().astype("<i8")
    n, c, s, _ = images.shape
    header = {"version": CACHE_VERSION, "key": key, "count": n, "channels": c, "image_size": s}
    blob = json.dumps({**header, "labels": _labels_digest(labels), "bad": list(decoded.bad)}).encode()
    images_at, labels_at = _offsets(len(blob), n, c, s)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, durable=False) as tmp, open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(blob)) + blob)
            f.seek(images_at)
            f.write(memoryview(images.numpy()).cast("B"))
            f.seek(labels_at)
            f.write(labels.tobytes())
        log.info("wrote decoded cache %s (%.1f MB)", path, images.numel() / 1e6)
    except OSError as e:  # a read-only or full cache folder: decode again next time
        log.warning("could not write the decoded cache %s (%s): it will be decoded again next run", path, e)
        return False
    old = old_caches(path.parent)
    if old:
        log.info(
            "%d decoded cache(s) of ddpm_lab 0.2 (%s, %.1f MB) are no longer read: delete them to free the space",
            len(old),
            path.parent / "*.pt",
            sum(p.stat().st_size for p in old) / 1e6,
        )
    return True


def _read_header(f, file_size: int) -> tuple[dict, int, int]:
    """The header of an open cache file and where its images and labels start, every field checked against the
    file's size; a ValueError names the first flaw."""
    if f.read(len(MAGIC)) != MAGIC:
        raise ValueError("it is not a ddpm_lab decoded cache (wrong magic)")
    (length,) = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))
    if length > min(MAX_HEADER, file_size):
        raise ValueError(f"its header claims {length} bytes")
    header = json.loads(f.read(length).decode())
    if not isinstance(header, dict) or set(header) != HEADER_KEYS:
        raise ValueError("its header does not have the expected fields")
    if not all(type(header[k]) is int for k in ("version", "count", "channels", "image_size")):
        raise ValueError("its header's sizes are not integers")
    if header["version"] != CACHE_VERSION:
        raise ValueError(f"it is of cache version {header['version']}, not {CACHE_VERSION}")
    n, c, s = header["count"], header["channels"], header["image_size"]
    if n < 1 or c < 1 or s < 1:
        raise ValueError(f"its header holds {n} images of {c}x{s}x{s} pixels")
    images_at, labels_at = _offsets(length, n, c, s)
    if file_size != labels_at + 8 * n:
        raise ValueError(f"it is {file_size} bytes, not the {labels_at + 8 * n} its header says")
    if not isinstance(header["bad"], list) or not all(isinstance(b, str) for b in header["bad"]):
        raise ValueError("its list of unreadable files is not a list of names")
    return header, images_at, labels_at


def read_cache(path: Path, key: str, image_size: int, channels: int) -> Decoded | None:
    """The cache in ``path``, memory-mapped, when it is whole and made for ``key`` at this size; None (with a warning)
    when it is damaged or foreign, so the caller decodes again and replaces it."""
    try:
        with open(path, "rb") as f:
            header, images_at, labels_at = _read_header(f, os.fstat(f.fileno()).st_size)
            if header["key"] != key:
                raise ValueError("it was not written for these files")
            n = header["count"]
            if (header["channels"], header["image_size"]) != (channels, image_size):
                raise ValueError(f"it holds {header['channels']}x{header['image_size']} px images")
            f.seek(labels_at)
            labels = np.frombuffer(f.read(8 * n), dtype="<i8")
        if _labels_digest(labels) != header["labels"] or (n and labels.min() < -1):
            raise ValueError("its labels do not match their hash")
        # Copy-on-write (MAP_PRIVATE): pages come from the page cache, shared by every process mapping the file,
        # and nothing a process does to its tensor can reach the file.
        shape = (n, channels, image_size, image_size)
        images = np.memmap(path, dtype=np.uint8, mode="c", offset=images_at, shape=shape)
    except Exception as e:  # truncated, foreign or edited: rebuild it, never a traceback on every later run
        log.warning("decoded cache %s is damaged (%s): decoding the images again and rewriting it", path, e)
        return None
    return Decoded(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), header["bad"])


# -- one decoder per machine ------------------------------------------------------------------------------------
def lock_path(path: Path) -> Path:
    """The lock beside a cache file: flock-ed by the process that decodes it, holding its pid, host and outcome."""
    return path.with_name(f".{path.name}.lock")


def _record(fd: int) -> dict:
    try:
        record = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
    except (OSError, ValueError):  # an empty, foreign or half-written lock file says nothing
        return {}
    return record if isinstance(record, dict) else {}


def _set_record(fd: int, state: str, reason: str = "") -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "state": state, "reason": reason, "time": time.time()}
    blob = json.dumps(record).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, blob, 0)


def _owner(record: dict) -> str:
    return f"process {record.get('pid', '?')} on {record.get('host', '?')}"


def _take_lock(fd: int, path: Path) -> bool:
    """flock ``fd``, saying whom this process waits for when another one holds it; False where the file system
    has no flock (some NFS mounts): then two processes may both decode, which costs time, never correctness."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        log.info("waiting for %s to write the decoded cache %s", _owner(_record(fd)), path)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        return False
    return True


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Which file ``path`` is now (inode, size, mtime), or None: replaced files (renamed over it) differ."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def shared_cache(
    path: Path, key: str, image_size: int, channels: int, decode: Callable[[], Decoded]
) -> tuple[Decoded, bool]:
    """The split cached in ``path``, memory-mapped, and whether this process decoded it (with ``decode``, then
    wrote it there) because it was missing or damaged.

    One process per machine decodes (the first to flock ``lock_path(path)``); every other one waits on the lock and
    then maps the file it wrote. A decoder that fails records why before it lets go, and the processes that were
    waiting stop with that reason in one line; one that was killed records nothing, and the next process decodes.
    """
    seen = _identity(path)
    found = read_cache(path, key, image_size, channels) if seen else None
    if found is not None:
        log.info("decoded cache %s: %d images, memory-mapped", path, len(found.images))
        return found, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only cache folder: no sharing, but the run goes on
        log.warning("cannot use the decoded cache folder %s (%s): decoding in this process only", path.parent, e)
        return decode(), True
    try:
        waiting_since = time.time()
        _take_lock(fd, path)
        now = _identity(path)
        found = read_cache(path, key, image_size, channels) if now and now != seen else None
        if found is not None:  # written by the process we waited for
            log.info("decoded cache %s: %d images, memory-mapped (written by another process)", path, len(found.images))
            return found, False
        record = _record(fd)
        if record.get("state") == "failed" and float(record.get("time", 0)) >= waiting_since:
            raise DatasetError(
                f"{_owner(record)} failed to decode the images for {path.name} ({record.get('reason')}): "
                "this process stops too; fix that and run again"
            )
        _set_record(fd, "decoding")
        log.info("decoding the images for %s (other processes wait and map the file)", path)
        try:
            decoded = decode()
        except BaseException as e:
            _set_record(fd, "failed", first_line(e, 300))
            raise
        written = write_cache(path, key, decoded)
        _set_record(fd, "done" if written else "unwritable")
        mapped = read_cache(path, key, image_size, channels) if written else None
        return (mapped if mapped is not None else decoded), True  # mapped: this process shares the pages too
    finally:
        os.close(fd)  # lets go of the flock


def old_caches(folder: Path) -> list[Path]:
    """Decoded caches of ddpm_lab 0.2 and earlier (one ``.pt`` per half) in ``folder``: never read any more."""
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []
