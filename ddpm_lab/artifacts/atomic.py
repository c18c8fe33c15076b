"""Writing files so that a kill, a full disk or a crash leaves the old complete file or the new complete file.

Every file ddpm_lab writes (checkpoints, images, GIFs, feature and image caches, result files) goes through
:func:`atomic_write`: the bytes go to a hidden temporary file in the same folder, are flushed to disk, and
the file is renamed over the target in one step (a rename within one folder is atomic).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_MARK = ".tmp-"


def temp_path(path: Path) -> Path:
    """The hidden temporary name ``<dir>/.<name>.tmp-<pid>`` that :func:`atomic_write` writes first."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename itself has happened
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path`` (folders are created).

    ``durable``: fsync the file and its folder, so the new file survives a power cut (checkpoints). On any
    error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        _fsync_folder(path.parent)


def save_json(data: object, path: str | os.PathLike) -> Path:
    """``data`` as indented JSON (a result file), written atomically; not fsynced (it can be recomputed)."""
    with atomic_write(path, durable=False) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return Path(path)


def remove_stale_temp_files(folder: str | os.PathLike) -> None:
    """Delete the temporary files of writes that a killed process left behind in ``folder``."""
    for tmp in Path(folder).glob(f".*{TEMP_MARK}*"):
        log.info("removing %s, left by an interrupted save", tmp)
        tmp.unlink(missing_ok=True)
