"""Features of real images, computed once and kept on disk, keyed on what they were computed from."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.errors import first_line
from ddpm_lab.metrics.scores import FeatureSet

log = logging.getLogger(__name__)


def cache_key(description: dict[str, Any]) -> str:
    """A short hash of a JSON-able description (what a cache file was computed from)."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_features(
    path: Path, compute: Callable[[], FeatureSet], description: dict[str, Any]
) -> tuple[FeatureSet, bool]:
    """Load features from ``path`` or compute and store them there (atomically).

    Returns (features, whether they came from the cache). ``description`` is stored alongside and must match;
    a cache file that is damaged or was made for something else is reported, recomputed and replaced.
    """
    wanted = json.loads(json.dumps(description, default=str))
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(stored, dict) or not isinstance(stored.get("features"), torch.Tensor):
                raise ValueError("it holds no feature tensor")
        except Exception as e:  # truncated or foreign file: never a traceback on every later run
            log.warning("feature cache %s is damaged (%s): recomputing it", path, first_line(e, 200))
        else:
            if stored.get("description") == wanted:
                return FeatureSet(stored["features"], stored.get("logits")), True
            log.warning("feature cache %s was made for %s; recomputing", path, stored.get("description"))
    result = compute()
    payload = {"description": wanted, "features": result.features}
    if result.logits is not None:
        payload["logits"] = result.logits
    with atomic_write(path, durable=False) as tmp:
        torch.save(payload, tmp)
    return result, False
