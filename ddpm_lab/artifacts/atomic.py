"""Writing files so that a kill, a full disk or a crash leaves the old complete file or the new complete file.

Every file ddpm_lab writes (checkpoints, images, GIFs, feature and image caches, result files) goes through
:func:`atomic_write`: the bytes go to a hidden temporary file in the same folder, are flushed to disk, and
the file is renamed over the target in one step (a rename within one folder is atomic).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ddpm_lab.errors import OutputExistsError

log = logging.getLogger(__name__)

TEMP_MARK = ".tmp-"


def temp_path(path: Path) -> Path:
    """A fresh hidden temporary name ``<dir>/.<name>.tmp-<pid>-<random>`` that :func:`atomic_write` writes first:
    never one a killed earlier write left behind, so such leftovers are ignored (and cleared by
    :func:`remove_stale_temp_files` where a folder is ours)."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def publish_new(tmp: Path, path: Path) -> None:
    """Give the complete file (or folder) ``tmp`` the name ``path`` only if no file or folder has that name, in
    one step, so two writers of one new name never replace each other's work. Raises OutputExistsError.

    A file is hard-linked (``link`` fails on a taken name) and its temporary name removed; where the file system
    has no hard links, the name is first created exclusively (``O_EXCL``). A folder is renamed, which fails onto
    anything but an empty folder.
    """
    taken = OutputExistsError(f"{path} already exists (another process wrote it meanwhile): nothing was overwritten")
    if tmp.is_dir():
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise taken
        try:
            os.rename(tmp, path)
        except OSError as e:  # ENOTEMPTY / EEXIST: someone else's folder is there now
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise taken from None
            raise
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise taken from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        try:  # no hard links here: claim the name, then move the file onto it
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        except FileExistsError:
            raise taken from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename itself has happened
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, durable: bool = True, new: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path`` (folders are created).

    ``durable``: fsync the file and its folder, so the new file survives a power cut (checkpoints). ``new``: the
    file must not exist, and never replaces one that appeared meanwhile (:func:`publish_new`, OutputExistsError).
    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if new:
            publish_new(tmp, path)
        else:
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
