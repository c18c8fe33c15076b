"""Evaluation entry point: ``python -m ddpm_lab.evaluate ckpt=PATH [n=1000] [sampler=...] [features=...]``.

Samples ``n`` images from a checkpoint and scores them (FID, KID, IS where the extractor has class logits)
against the dataset's real images. ``evaluate(cfg)`` does the work; ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.checkpoint import LoadedModel, load_model, pick_device
from ddpm_lab.config import _check_safe, config_dir, discard_fresh_run_folder
from ddpm_lab.errors import ConfigError, user_errors
from ddpm_lab.images import image_grid, save_png, to_uint8
from ddpm_lab.metrics import (
    FeatureExtractor,
    FeatureSet,
    WeightsMissingError,
    cache_key,
    cached_features,
    chunks,
    extract_features,
    format_scores,
    scores,
)
from ddpm_lab.samplers import Sampler
from ddpm_lab.validate import validate_checkpoint_path, validate_sampler_config

log = logging.getLogger(__name__)


def build_features(node: DictConfig) -> FeatureExtractor:
    """Instantiate the extractor; a missing weights file surfaces as its own one-line error, not Hydra's wrapper."""
    try:
        return instantiate(node)
    except InstantiationException as e:
        if isinstance(e.__cause__, WeightsMissingError):
            raise e.__cause__ from None
        raise


def dataset_config(cfg: DictConfig, loaded: LoadedModel) -> dict[str, Any]:
    """The real images to compare with: ``dataset=...`` overrides, else the training run's own dataset.

    The resolution and channels always follow the checkpoint: scores compare images the model can make.
    """
    if cfg.get("dataset") is not None:
        dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
        where = "the dataset= override"
    else:
        run_config = Path(cfg.ckpt).expanduser().resolve().parent.parent / ".hydra" / "config.yaml"
        if not run_config.is_file():
            raise ConfigError(
                f"no dataset to compare with: {run_config} (the training run's config) does not exist; "
                f"pass dataset=<option> (e.g. dataset=image_folder dataset.root=DIR)"
            )
        dataset = OmegaConf.to_container(OmegaConf.load(run_config).dataset, resolve=True)
        where = str(run_config)
    _check_safe(dataset, f"dataset (from {where})")
    stored = loaded.config.get("dataset", {})
    for key in ("image_size", "channels"):
        if key in stored and dataset.get(key) != stored[key]:
            log.info("dataset.%s=%s -> %s, as the checkpoint's model was trained", key, dataset.get(key), stored[key])
            dataset[key] = stored[key]
    return dataset


def real_features(cfg: DictConfig, dataset: dict[str, Any], extractor: FeatureExtractor, device: torch.device) -> tuple[FeatureSet, Path]:
    """Features of the dataset's real images, computed once per dataset, resolution and extractor, then cached."""
    datamodule = instantiate(dataset)
    name = dataset["_target_"].rsplit(".", 1)[-1]
    root = dataset.get("root")
    description = {
        "dataset": dataset["_target_"],
        "root": str(Path(root).expanduser().resolve()) if root else None,
        "split": dataset.get("split"),
        "image_size": dataset["image_size"],
        "channels": dataset["channels"],
        "extractor": extractor.name,
        "n_real": cfg.n_real,
        "seed": cfg.seed,
    }
    n_tag = "all" if cfg.n_real is None else str(cfg.n_real)
    path = Path(cfg.cache_dir) / (
        f"{name}_{dataset.get('split', 'train')}_{dataset['image_size']}px_{extractor.name}_{n_tag}_{cache_key(description)}.pt"
    )

    def compute() -> FeatureSet:
        datamodule.prepare_data()
        images, _ = datamodule.load_split()
        if cfg.n_real is not None and cfg.n_real < len(images):
            keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.n_real]
            images = images[keep]
        log.info("extracting %s features of %d real images", extractor.name, len(images))
        return extract_features(extractor, chunks(images, cfg.batch_size), device)

    features, hit = cached_features(path, compute, description)
    log.info("real-image features %s %s", "read from" if hit else "cached in", path)
    return features, path


@torch.no_grad()
def generate(loaded: LoadedModel, sampler: Sampler, n: int, batch_size: int, seed: int, device: torch.device) -> torch.Tensor:
    """``n`` uint8 samples on the CPU, in batches, from one seeded generator (reproducible for a given seed)."""
    net = loaded.net
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = loaded.diffusion.sample(net, (b, net.in_channels, net.image_size, net.image_size), sampler=sampler,
                                    generator=generator, device=device)
        out.append(to_uint8(x).cpu())
        log.info("sampled %d / %d", start + b, n)
    return torch.cat(out)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Sample ``cfg.n`` images from ``cfg.ckpt``, score them against real images, write ``results.json``."""
    if cfg.n < 2:
        raise ConfigError(f"n={cfg.n}: FID needs at least 2 generated images")
    validate_checkpoint_path(cfg.ckpt)
    out_dir = Path(cfg.paths.output_dir)
    device = pick_device(str(cfg.device))
    # Everything a user can get wrong is checked before any sampling: checkpoint, extractor weights, dataset.
    loaded = load_model(cfg.ckpt, device=device, weights=cfg.weights)
    if cfg.get("sampler") is not None:
        validate_sampler_config(cfg.sampler, loaded.diffusion.num_timesteps)
    extractor = build_features(cfg.features)
    sampler: Sampler = instantiate(cfg.sampler) if cfg.get("sampler") is not None else loaded.sampler
    dataset = dataset_config(cfg, loaded)

    real, cache_path = real_features(cfg, dataset, extractor, device)
    started = time.perf_counter()
    images = generate(loaded, sampler, cfg.n, cfg.batch_size, cfg.seed, device)
    sampling_s = time.perf_counter() - started
    save_png(image_grid(images[:64].float() / 127.5 - 1.0), out_dir / "samples.png")
    fake = extract_features(extractor, chunks(images, cfg.batch_size), device)
    result = scores(real, fake, kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size,
                    is_splits=cfg.is_splits, seed=cfg.seed)
    result.update(
        ckpt=str(cfg.ckpt), global_step=loaded.global_step, weights=cfg.weights, sampler=repr(sampler),
        features=extractor.name, dataset=dataset["_target_"], real_stats=str(cache_path),
        sampling_seconds=round(sampling_s, 3), seed=cfg.seed, device=str(device),
    )
    line = format_scores(result, extractor.name)
    log.info("%s", line)
    print(line)
    path = out_dir / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    log.info("results in %s", path)
    return result


@hydra.main(config_path=config_dir(), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    with user_errors(cleanup=discard_fresh_run_folder):  # one line on stderr, exit status 2
        return evaluate(cfg)["fid"]


if __name__ == "__main__":
    main()
