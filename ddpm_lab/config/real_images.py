"""The real images ``evaluate`` compares samples with: the ``dataset=`` override or the training run's own dataset
(read from the untrusted ``<run>/.hydra/config.yaml``), its splits loaded through its data module, and the folder
where their features (and the ``features=classifier`` networks) are cached."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.artifacts.allow_list import check_safe, resolve_references
from ddpm_lab.artifacts.cache_dir import FID_STATS, cache_folder
from ddpm_lab.config.build import build
from ddpm_lab.config.overrides import read_yaml
from ddpm_lab.errors import ConfigError

log = logging.getLogger(__name__)


def compared_dataset(
    override: DictConfig | None, ckpt: str, cache_dir: str | None, stored: dict[str, Any]
) -> dict[str, Any]:
    """The dataset section to compare with: ``override`` (``dataset=...``), else the training run's own.

    ``cache_dir`` (``paths.cache_dir``) replaces the run's: decoded caches go to our cache folder. The resolution
    and channels always follow the checkpoint's ``stored`` config: scores compare images the model can make.
    """
    if override is not None:
        dataset = OmegaConf.to_container(override, resolve=True)
        where = "the dataset= override"
    else:
        run_config = Path(ckpt).expanduser().resolve().parent.parent / ".hydra" / "config.yaml"
        recorded = _recorded_dataset(stored)
        if run_config.is_file():
            run = read_yaml(run_config)  # size-capped, unresolved: no resolver may run
            where = str(run_config)
            if not isinstance(run, dict) or not isinstance(run.get("dataset"), dict):
                raise ConfigError(f"{run_config} has no dataset section: pass dataset=<option>")
            node = {k: v for k, v in run["dataset"].items() if k != "cache_dir"}  # ours is set below
            dataset = resolve_references(run, node, f"dataset (from {where})")
        elif _usable(recorded):
            # A checkpoint outside its run folder (copied, or `ema out=DIR`): the resolved dataset section its run
            # recorded in it. Untrusted like the file: checked below, and no resolver runs on it.
            where = "the checkpoint's recorded run config"
            dataset = dict(recorded)  # its cache_dir is replaced by ours below
        else:
            raise ConfigError(
                f"no dataset to compare with: {run_config} (the training run's config) does not exist and the "
                "checkpoint records no usable dataset; pass dataset=<option> "
                "(e.g. dataset=image_folder dataset.root=DIR)"
            )
    check_safe(dataset, f"dataset (from {where})")
    if "cache_dir" in dataset or "cache_min_files" in dataset:  # decoded caches go to our cache folder, not the run's
        dataset["cache_dir"] = cache_dir
    trained = stored.get("dataset", {})
    for key in ("image_size", "channels"):
        if key in trained and dataset.get(key) != trained[key]:
            log.info("dataset.%s=%s -> %s, as the checkpoint's model was trained", key, dataset.get(key), trained[key])
            dataset[key] = trained[key]
    return dataset


def _recorded_dataset(stored: dict[str, Any]) -> Any:
    """``stored["run"]["config"]["dataset"]``, the resolved dataset section a run records in its checkpoints; None
    where any level is missing or not a mapping (an old, converted or hand-edited checkpoint)."""
    node: Any = stored
    for key in ("run", "config", "dataset"):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _usable(recorded: Any) -> bool:
    """Whether a recorded dataset section can be used as it is: a mapping with a target and no interpolation left."""
    return (
        isinstance(recorded, dict)
        and isinstance(recorded.get("_target_"), str)
        and not any(isinstance(v, str) and "${" in v for v in recorded.values())
    )


def images_of(dataset: dict[str, Any]) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Build the data module of ``dataset`` now (its constructor checks ``dataset.*``); the function returned reads
    its split (uint8 images, labels with −1 for none) when called, downloading first where the dataset does."""
    datamodule = build("dataset", OmegaConf.create(dataset))

    def load() -> tuple[torch.Tensor, torch.Tensor]:
        datamodule.prepare_data()
        return datamodule.load_split()

    return load


def class_names_of(dataset: dict[str, Any]) -> list[str] | None:
    """The class names of ``dataset``'s split, label by label (a folder listing at most; None: unlabeled)."""
    return build("dataset", OmegaConf.create(dataset)).class_names


def dataset_source(dataset: dict[str, Any]) -> str:
    """How messages name a dataset: its data module's class, and its folder when it has one."""
    return dataset["_target_"].rsplit(".", 1)[-1] + (f" at {dataset['root']}" if dataset.get("root") else "")


def stats_folder(cache_dir: Any, paths_cache_dir: str | None) -> Path:
    """Where real-image statistics and ``features=classifier`` networks are cached: ``cache_dir``, else
    ``<paths.cache_dir>/fid_stats``. Refuses a ``cache_dir`` that is not a folder name, or names a file."""
    if cache_dir is not None and (
        not isinstance(cache_dir, str) or not cache_dir.strip() or Path(cache_dir).expanduser().is_file()
    ):
        raise ConfigError(
            f"cache_dir must be a folder or null (<paths.cache_dir>/fid_stats), got {cache_dir!r}: "
            "set cache_dir=<folder>"
        )
    return Path(cache_dir).expanduser() if cache_dir else cache_folder(paths_cache_dir, FID_STATS)
