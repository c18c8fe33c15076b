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
from ddpm_lab.metrics.features import FeatureExtractor
from ddpm_lab.metrics.scores import (
    FeatureSet,
    ScoreSettings,
    chunks,
    extract_features,
    gather_features,
    random_subset,
)
from ddpm_lab.ranks import ONE_PROCESS, Ranks

log = logging.getLogger(__name__)


def cache_key(description: dict[str, Any]) -> str:
    """A short hash of a JSON-able description (what a cache file was computed from)."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_cached(path: Path, description: dict[str, Any]) -> FeatureSet | None:
    """The features stored in ``path`` for ``description``, or None: missing, damaged (a warning) or made for
    something else (a warning); such a file is replaced when the features are computed again."""
    wanted = json.loads(json.dumps(description, default=str))
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(stored, dict) or not isinstance(stored.get("features"), torch.Tensor):
            raise ValueError("it holds no feature tensor")
    except Exception as e:  # truncated or foreign file: never a traceback on every later run
        log.warning("feature cache %s is damaged (%s): recomputing it", path, first_line(e, 200))
        return None
    if stored.get("description") != wanted:
        log.warning("feature cache %s was made for %s; recomputing", path, stored.get("description"))
        return None
    return FeatureSet(stored["features"], stored.get("logits"))


def write_cached(path: Path, result: FeatureSet, description: dict[str, Any]) -> None:
    """Store ``result`` in ``path`` (atomically) with the ``description`` it must match when read back."""
    payload = {"description": json.loads(json.dumps(description, default=str)), "features": result.features}
    if result.logits is not None:
        payload["logits"] = result.logits
    with atomic_write(path, durable=False) as tmp:
        torch.save(payload, tmp)


def cached_features(
    path: Path, compute: Callable[[], FeatureSet], description: dict[str, Any]
) -> tuple[FeatureSet, bool]:
    """Load features from ``path`` or compute and store them there (atomically).

    Returns (features, whether they came from the cache). ``description`` is stored alongside and must match;
    a cache file that is damaged or was made for something else is reported, recomputed and replaced.
    """
    stored = read_cached(path, description)
    if stored is not None:
        return stored, True
    result = compute()
    write_cached(path, result, description)
    return result, False


def real_features(
    load: Callable[[], torch.Tensor],
    dataset: dict[str, Any],
    extractor: FeatureExtractor,
    folder: Path,
    settings: ScoreSettings,
    ranks: Ranks = ONE_PROCESS,
) -> tuple[FeatureSet | None, Path]:
    """Features of a dataset's real images, computed once per dataset, resolution, extractor and subset, then
    cached in ``folder``; returns them and their file.

    ``dataset``: the dataset section (``_target_``, ``root``, ``split``, ``image_size``, ``channels``) the images
    come from; ``load()`` reads them (uint8) on a cache miss; ``settings.n_real`` of them (None: all) are drawn
    with ``settings.seed``. On several ``ranks`` rank 0 reads the cache; on a miss every rank extracts its share
    (rank 0 loading first) and rank 0 writes the file; only rank 0 gets the features (the others None).
    """
    n_real, seed = settings.n_real, settings.seed
    root = dataset.get("root")
    description = {
        "dataset": dataset["_target_"],
        "root": str(Path(root).expanduser().resolve()) if root else None,
        "split": dataset.get("split"),
        "image_size": dataset["image_size"],
        "channels": dataset["channels"],
        "extractor": extractor.name,
        "n_real": n_real,
        "seed": seed,
    }
    name = dataset["_target_"].rsplit(".", 1)[-1]
    n_tag = "all" if n_real is None else str(n_real)
    path = folder / (
        f"{name}_{dataset.get('split', 'train')}_{dataset['image_size']}px_{extractor.name}_{n_tag}_"
        f"{cache_key(description)}.pt"
    )
    stored = read_cached(path, description) if ranks.is_zero else None
    if ranks.from_rank_zero(stored is not None):
        log.info("real-image features read from %s", path)
        return stored, path

    images = ranks.rank_zero_first(lambda: random_subset(load(), n_real, seed))
    share, bs = ranks.share(len(images), settings.batch_size), settings.batch_size
    with ranks.together():
        if ranks.is_zero:
            log.info("extracting %s features of %d real images", extractor.name, len(images))
        part = (
            extract_features(extractor, chunks(images[share.start : share.stop], bs), settings.device)
            if share
            else None
        )
    features = gather_features(ranks, part, len(images), bs)
    with ranks.together():
        if ranks.is_zero:
            write_cached(path, features, description)
            log.info("real-image features cached in %s", path)
    return features if ranks.is_zero else None, path
