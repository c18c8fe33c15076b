"""Weights files fetched once into a cache, kept only when they are the expected bytes (size and SHA-256).

:func:`download_verified` streams a URL (``https://``, or ``file://`` for a copy on a shared disk) into a hidden
temporary file beside the target, hashing as it goes, and renames it into place only when the size and the SHA-256
match: a truncated, substituted or endless download is never left where a later run would pick it up.
:func:`sha256_of` checks a file that is already there before anything loads it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from urllib.request import urlopen

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.errors import WeightsMismatchError, WeightsMissingError, first_line

log = logging.getLogger(__name__)

SCHEMES = ("https", "http", "file")
_CHUNK = 1 << 20


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in chunks (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download_verified(url: str, path: str | os.PathLike, sha256: str, size: int, fix: str, timeout: float = 60) -> Path:
    """Fetch ``url`` to ``path`` when it is ``size`` bytes with SHA-256 ``sha256``; else nothing is written there.

    Raises :class:`WeightsMissingError` when it cannot be fetched (offline, not found) and
    :class:`WeightsMismatchError` when other bytes come; both messages end with ``fix`` (what to do instead).
    """
    path = Path(path)
    log.info("downloading %s (%.0f MB) to %s", url, size / 1e6, path)
    with atomic_write(path, durable=False) as tmp:  # an error inside: the temporary file is removed
        digest, received = hashlib.sha256(), 0
        try:
            with urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
                while block := response.read(_CHUNK):
                    received += len(block)
                    if received > size:  # more than the file we want: stop before filling the disk
                        break
                    digest.update(block)
                    f.write(block)
        except (OSError, ValueError) as e:  # URLError, a timeout, a broken connection; ValueError: a malformed URL
            raise WeightsMissingError(f"cannot download {url} ({first_line(e, 200)}): {fix}") from e
        if received != size:
            more = "more than" if received > size else f"{received} bytes, not"
            raise WeightsMismatchError(f"{url} sent {more} the {size} bytes expected; nothing was kept: {fix}")
        if digest.hexdigest() != sha256:
            raise WeightsMismatchError(
                f"{url} sent a file with SHA-256 {digest.hexdigest()}, not {sha256}; nothing was kept: {fix}"
            )
    log.info("%s verified (SHA-256 %s)", path, sha256)
    return path
