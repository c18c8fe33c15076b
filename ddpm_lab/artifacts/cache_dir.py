"""Where ddpm_lab keeps its caches: one folder (``paths.cache_dir``), one sub-folder per kind of cache.

Decoded datasets (``decoded/``), real-image features and trained classifiers (``fid_stats/``) all go below it,
never into a dataset's own folder. Used by the data modules, the FID callback and ``evaluate``.
"""

from __future__ import annotations

import os
from pathlib import Path

DECODED = "decoded"  # <cache>/decoded/: decoded uint8 images of a dataset
FID_STATS = "fid_stats"  # <cache>/fid_stats/: real-image features, features=classifier networks


def default_cache_dir() -> Path:
    """Our cache folder when ``paths.cache_dir`` is null: ``$XDG_CACHE_HOME/ddpm_lab``, else ``~/.cache/ddpm_lab``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"  # XDG: relative ones are invalid
    return base / "ddpm_lab"


def cache_folder(cache_dir: str | os.PathLike | None, kind: str | None = None) -> Path:
    """``paths.cache_dir`` as a folder (null: :func:`default_cache_dir`), or its ``kind`` sub-folder."""
    root = Path(cache_dir).expanduser() if cache_dir not in (None, "") else default_cache_dir()
    return root / kind if kind else root
