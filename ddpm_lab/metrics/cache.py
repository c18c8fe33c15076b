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
from ddpm_lab.metrics.scores import FeatureSet, ScoreSettings, chunks, extract_features, random_subset

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


def real_features(
    load: Callable[[], torch.Tensor],
    dataset: dict[str, Any],
    extractor: FeatureExtractor,
    folder: Path,
    settings: ScoreSettings,
) -> tuple[FeatureSet, Path]:
    """Features of a dataset's real images, computed once per dataset, resolution, extractor and subset, then
    cached in ``folder``; returns them and their file.

    ``dataset``: the dataset section (``_target_``, ``root``, ``split``, ``image_size``, ``channels``) the images
    come from; ``load()`` reads them (uint8) on a cache miss; ``settings.n_real`` of them (None: all) are drawn
    with ``settings.seed``.
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

    def compute() -> FeatureSet:
        images = random_subset(load(), n_real, seed)
        log.info("extracting %s features of %d real images", extractor.name, len(images))
        return extract_features(extractor, chunks(images, settings.batch_size), settings.device)

    features, hit = cached_features(path, compute, description)
    log.info("real-image features %s %s", "read from" if hit else "cached in", path)
    return features, path
