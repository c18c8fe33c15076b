"""Shards for ``dataset=streaming``: a dataset's training and validation images written with Lightning's litdata
(``litdata.optimize``) into ``<out>/train/`` and ``<out>/val/``, one item per image (``image``: (C, S, S) uint8,
``label``: int, −1 unlabelled), and ``<out>/ddpm_lab.json``: the image size, channels, class names and counts that
travel with them, written last (a folder without it is an unfinished write).

``<out>`` is a local folder or an object-store URL (``s3://``, ``gs://``, ...), which is passed through to litdata.
litdata is optional: ``pip install "ddpm_lab[streaming]"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ddpm_lab.data.rows import Rows
from ddpm_lab.errors import DatasetError, OutputExistsError

log = logging.getLogger(__name__)

INFO_NAME = "ddpm_lab.json"
SHARDS_FORMAT = 1
PARTS = ("train", "val")
MAX_INFO_BYTES = 1 << 20
INSTALL = 'pip install "ddpm_lab[streaming]"'
ITEMS_PER_TASK = 256  # images per call of the writer's function: a few MB of work per task


def import_litdata() -> ModuleType:
    """litdata, or one line saying how to install it. It is told not to ask PyPI for a newer version on every
    start (a 30 s timeout offline); ``LITDATA_DISABLE_VERSION_CHECK=0`` turns that check back on."""
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    try:
        import litdata
    except ImportError as e:
        raise DatasetError(f"dataset=streaming needs litdata, which is not installed: {INSTALL}") from e
    return litdata


def is_remote(root: str) -> bool:
    """An object-store URL (``s3://bucket/x``): litdata reads it, we never treat it as a local path."""
    return "://" in str(root)


def part_dir(root: str, part: str) -> str:
    return f"{str(root).rstrip('/')}/{part}" if is_remote(root) else str(Path(root) / part)


@dataclass(frozen=True)
class ShardInfo:
    """What travels with the shards: checked against ``dataset.*`` before training starts."""

    image_size: int
    channels: int
    class_names: list[str] | None
    train: int  # images in train/
    val: int  # images in val/ (0: no validation part)
    source: str  # what they were written from, for people
    format: int = SHARDS_FORMAT


def parse_info(blob: bytes, where: str) -> ShardInfo:
    """A ``ddpm_lab.json`` read from disk (untrusted): every field checked; a DatasetError names the flaw."""

    def bad(why: str) -> DatasetError:
        return DatasetError(f"{where} is not a ddpm_lab shard description ({why}): write the shards again")

    if len(blob) > MAX_INFO_BYTES:
        raise bad(f"{len(blob)} bytes")
    try:
        data = json.loads(blob.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"not JSON: {e}") from None
    if not isinstance(data, dict) or set(data) != set(ShardInfo.__dataclass_fields__):
        raise bad("not the expected fields")
    if type(data["format"]) is not int or data["format"] > SHARDS_FORMAT:
        raise DatasetError(
            f"{where} was written by a newer ddpm_lab (shard format {data['format']}; this version reads up to "
            f"{SHARDS_FORMAT}): upgrade ddpm_lab to read it"
        )
    counts = (data["image_size"], data["channels"], data["train"], data["val"])
    if not all(type(v) is int for v in counts) or data["image_size"] < 1 or data["train"] < 1 or data["val"] < 0:
        raise bad("sizes and counts must be positive integers")
    if data["channels"] not in (1, 3):
        raise bad(f"channels={data['channels']!r}")
    names = data["class_names"]
    if names is not None and not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise bad("class_names must be a list of names or null")
    if not isinstance(data["source"], str):
        raise bad("source must be text")
    return ShardInfo(**data)


def _fetch(url: str, cache_dir: Path) -> Path:
    """A remote ``ddpm_lab.json`` downloaded into our cache folder, through litdata's own storage clients."""
    import_litdata()
    from litdata.streaming.fs_provider import _get_fs_provider

    local = cache_dir / "shards" / hashlib.blake2b(url.encode(), digest_size=8).hexdigest() / INFO_NAME
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        _get_fs_provider(url).download_file(url, str(local))
    except Exception as e:  # any storage client's error: no credentials, no such bucket, offline
        raise DatasetError(f"cannot read {url} ({type(e).__name__}: {e}): check the URL and your credentials") from e
    return local


def read_info(root: str, cache_dir: Path) -> ShardInfo:
    """The ``ddpm_lab.json`` of a shards folder (or URL); a missing, incomplete or foreign one is a DatasetError."""
    where = part_dir(root, INFO_NAME)
    how = f"write them with python -m ddpm_lab.shards dataset=<option> out={root}"
    if not is_remote(root):
        if not Path(root).is_dir():
            raise DatasetError(f"dataset.root={root} is not a folder of shards: {how}")
        if not Path(where).is_file():
            found = (
                "holds no shards" if not Path(part_dir(root, "train")).is_dir() else "is unfinished (no ddpm_lab.json)"
            )
            raise DatasetError(f"dataset.root={root} {found}: {how}")
    path = _fetch(where, cache_dir) if is_remote(root) else Path(where)
    with open(path, "rb") as f:
        return parse_info(f.read(MAX_INFO_BYTES + 1), where)


def check_info(info: ShardInfo, root: str, image_size: int, channels: int) -> None:
    """The config asks for the shards' size and channels (the model is built from them)."""
    for key, asked, held in (("image_size", image_size, info.image_size), ("channels", channels, info.channels)):
        if asked != held:
            raise DatasetError(
                f"dataset.{key}={asked} but the shards in {root} hold images with {key}={held}: set "
                f"dataset.{key}={held}, or write shards at {key}={asked} (python -m ddpm_lab.shards "
                f"dataset.{key}={asked} ...)"
            )


class ShardItems:
    """The function litdata's workers call: indices in, one ``{"image", "label"}`` item per image out.

    Holds numpy views (of a memory-mapped decoded cache, or of this process's tensors): forked workers share their
    pages, and no torch call runs after the fork."""

    def __init__(self, images: Rows | torch.Tensor, labels: torch.Tensor) -> None:
        if not isinstance(images, Rows):
            images = Rows(images, torch.arange(len(images)))
        self.images, self.index, self.labels = images.images.cpu().numpy(), images.index.cpu().numpy(), labels.numpy()

    def __call__(self, positions: Sequence[int]) -> Iterator[dict[str, Any]]:
        for i in positions:
            yield {"image": np.ascontiguousarray(self.images[self.index[i]]), "label": int(self.labels[i])}


def check_output(out: str) -> None:
    """A local ``out`` must not exist or be empty: shards are never written over anything."""
    if not is_remote(out) and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise OutputExistsError(
            f"out={out} already exists and is not empty: pass a new folder (nothing is overwritten)"
        )


def write_shards(
    parts: dict[str, tuple[Rows | torch.Tensor, torch.Tensor]],
    info: ShardInfo,
    out: str,
    chunk_bytes: str | int,
    workers: int,
) -> None:
    """Write ``parts`` (``train``/``val`` -> images, labels) as litdata shards under ``out``, then ``ddpm_lab.json``.

    A local folder this call created is removed again if writing fails, so a failed write leaves nothing behind.
    """
    litdata = import_litdata()
    check_output(out)
    made = not is_remote(out) and not Path(out).exists()
    start_method = multiprocessing.get_start_method(allow_none=True)
    try:
        for part, (images, labels) in parts.items():
            if len(images) == 0:
                continue
            batches = [
                list(range(i, min(i + ITEMS_PER_TASK, len(images)))) for i in range(0, len(images), ITEMS_PER_TASK)
            ]
            litdata.optimize(
                fn=ShardItems(images, labels),
                inputs=batches,
                output_dir=part_dir(out, part),
                chunk_bytes=chunk_bytes,
                num_workers=min(workers, len(batches)),
                start_method="fork",  # the workers share the decoded images instead of a pickled copy each
                keep_data_ordered=True,
                reorder_files=False,
                verbose=False,
            )
            log.info("wrote %d %s images as shards into %s", len(images), part, part_dir(out, part))
        _write_info(out, info)
    except BaseException:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        multiprocessing.set_start_method(start_method, force=True)  # litdata sets it process-wide


def _write_info(out: str, info: ShardInfo) -> None:
    blob = json.dumps(asdict(info), indent=1).encode()
    if not is_remote(out):
        Path(out, INFO_NAME).write_bytes(blob)
        return
    from litdata.streaming.fs_provider import _get_fs_provider

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, INFO_NAME).write_bytes(blob)
        _get_fs_provider(out).upload_file(str(Path(tmp, INFO_NAME)), part_dir(out, INFO_NAME))
