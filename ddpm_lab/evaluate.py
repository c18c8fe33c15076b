"""Evaluation entry point: ``python -m ddpm_lab.evaluate ckpt=PATH [n=1000] [sampler=...] [features=...]``.

Samples ``n`` images from a checkpoint and scores them (FID, KID, IS where the extractor has class logits)
against the dataset's real images; ``metrics=nll`` instead bounds the likelihood of the test split in bits/dim.
``evaluate(cfg)`` does the work; ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.artifacts.allow_list import check_safe, resolve_references
from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.artifacts.checkpoint import WEIGHTS, LoadedModel, checkpoint_file, load_model
from ddpm_lab.artifacts.figures import bound_terms_figure, save_figure
from ddpm_lab.artifacts.images import image_grid, refuse_existing, save_png, to_uint8
from ddpm_lab.config import build, check_sampler, config_dir, pick_device
from ddpm_lab.config.checks import check_common, check_integer
from ddpm_lab.config.entry import entry_point
from ddpm_lab.config.overrides import read_yaml
from ddpm_lab.config.run_folder import discard_fresh_run_folder
from ddpm_lab.data.sources import cache_folder
from ddpm_lab.diffusion import Sampler, generate_batches
from ddpm_lab.diffusion.samplers import VARIANCES
from ddpm_lab.errors import ConfigError, check_choice, check_flag, user_errors
from ddpm_lab.metrics import (
    FeatureExtractor,
    FeatureSet,
    cache_key,
    cached_features,
    chunks,
    extract_features,
    format_scores,
    images_bound,
    scores,
)

log = logging.getLogger(__name__)
METRICS = ("fid", "nll")


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
        stored = read_yaml(run_config)  # size-capped, unresolved: no resolver may run
        where = str(run_config)
        if not isinstance(stored, dict) or not isinstance(stored.get("dataset"), dict):
            raise ConfigError(f"{run_config} has no dataset section: pass dataset=<option>")
        node = {k: v for k, v in stored["dataset"].items() if k != "cache_dir"}  # ours is set below
        dataset = resolve_references(stored, node, f"dataset (from {where})")
    check_safe(dataset, f"dataset (from {where})")
    if "cache_dir" in dataset or "cache_min_files" in dataset:  # decoded caches go to our cache folder, not the run's
        dataset["cache_dir"] = cfg.paths.get("cache_dir")
    stored = loaded.config.get("dataset", {})
    for key in ("image_size", "channels"):
        if key in stored and dataset.get(key) != stored[key]:
            log.info("dataset.%s=%s -> %s, as the checkpoint's model was trained", key, dataset.get(key), stored[key])
            dataset[key] = stored[key]
    return dataset


def real_features(
    cfg: DictConfig, dataset: dict[str, Any], extractor: FeatureExtractor, device: torch.device
) -> tuple[FeatureSet, Path]:
    """Features of the dataset's real images, computed once per dataset, resolution and extractor, then cached."""
    datamodule = build("dataset", OmegaConf.create(dataset))
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
    folder = (
        Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_folder(cfg.paths.get("cache_dir")) / "fid_stats"
    )
    path = folder / (
        f"{name}_{dataset.get('split', 'train')}_{dataset['image_size']}px_{extractor.name}_{n_tag}_"
        f"{cache_key(description)}.pt"
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


def check(cfg: DictConfig) -> None:
    """The settings of ``evaluate`` itself, before the checkpoint is even read."""
    check_common(cfg)  # ckpt given, paths.output_root, seed
    check_integer(cfg, "n", low=2)  # each stored back as an int: n=1000.0 works
    check_integer(cfg, "n_real", low=2, optional=True)
    check_integer(cfg, "batch_size", low=1)
    check_integer(cfg, "kid_subsets", low=1)
    check_integer(cfg, "kid_subset_size", low=2)
    check_integer(cfg, "is_splits", low=1)
    check_choice(cfg.weights, "weights", WEIGHTS)
    if check_choice(cfg.get("metrics", "fid"), "metrics", METRICS) == "nll":
        check_integer(cfg, "nll.n", low=1, optional=True)
        check_integer(cfg, "nll.stride", low=1)
        check_flag(cfg.nll.clip_denoised, "nll.clip_denoised")
        if cfg.nll.variance is not None:
            check_choice(cfg.nll.variance, "nll.variance", VARIANCES)
    pick_device(str(cfg.device))
    cache_dir = cfg.cache_dir
    if cache_dir is not None and (
        not isinstance(cache_dir, str) or not cache_dir.strip() or Path(cache_dir).expanduser().is_file()
    ):
        raise ConfigError(
            f"cache_dir must be a folder or null (<paths.cache_dir>/fid_stats), got {cache_dir!r}: "
            "set cache_dir=<folder>"
        )


def generate_uint8(loaded: LoadedModel, sampler: Sampler, cfg: DictConfig, device: torch.device) -> torch.Tensor:
    """``cfg.n`` uint8 samples on the CPU from ``cfg.seed`` (see ``ddpm_lab.diffusion.generate``)."""
    out = []
    for batch in generate_batches(
        loaded.net, loaded.diffusion, cfg.n, sampler=sampler, seed=cfg.seed, batch_size=cfg.batch_size, device=device
    ):
        out.append(to_uint8(batch.images).cpu())
        log.info("sampled %d / %d", batch.start + len(batch.images), cfg.n)
    return torch.cat(out)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Sample ``cfg.n`` images from ``cfg.ckpt``, score them against real images, write ``results.json``."""
    check(cfg)
    checkpoint_file(cfg.ckpt)
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("metrics", "fid") == "nll":
        return evaluate_nll(cfg, out_dir)
    refuse_existing([out_dir / "results.json", out_dir / "samples.png"])
    device = pick_device(str(cfg.device))
    # Everything a user can get wrong is checked before any sampling: checkpoint, extractor weights, dataset.
    loaded = load_model(cfg.ckpt, device=device, weights=cfg.weights)
    if cfg.get("sampler") is not None:
        check_sampler(cfg.sampler, loaded.diffusion.num_timesteps)
    extractor: FeatureExtractor = build("features", cfg.features)
    sampler: Sampler = build("sampler", cfg.sampler) if cfg.get("sampler") is not None else loaded.sampler
    dataset = dataset_config(cfg, loaded)

    real, cache_path = real_features(cfg, dataset, extractor, device)
    started = time.perf_counter()
    images = generate_uint8(loaded, sampler, cfg, device)
    sampling_s = time.perf_counter() - started
    save_png(image_grid(images[:64].float() / 127.5 - 1.0), out_dir / "samples.png")
    fake = extract_features(extractor, chunks(images, cfg.batch_size), device)
    result = scores(
        real,
        fake,
        kid_subsets=cfg.kid_subsets,
        kid_subset_size=cfg.kid_subset_size,
        is_splits=cfg.is_splits,
        seed=cfg.seed,
    )
    result.update(
        ckpt=str(cfg.ckpt),
        global_step=loaded.global_step,
        weights=cfg.weights,
        sampler=repr(sampler),
        features=extractor.name,
        dataset=dataset["_target_"],
        real_stats=str(cache_path),
        sampling_seconds=round(sampling_s, 3),
        seed=cfg.seed,
        device=str(device),
    )
    line = format_scores(result, extractor.name)
    log.info("%s", line)
    print(line)
    path = out_dir / "results.json"
    with atomic_write(path, durable=False) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    log.info("results in %s", path)
    return result


def evaluate_nll(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """``metrics=nll``: the variational bound on ``nll.n`` test images, its parts (``results.json``) and the
    figure of its terms against t (``bound_terms.png``); see ``ddpm_lab.metrics.nll``."""
    refuse_existing([out_dir / "results.json", out_dir / "bound_terms.png"])
    device = pick_device(str(cfg.device))
    loaded = load_model(cfg.ckpt, device=device, weights=cfg.weights)
    dataset = {**dataset_config(cfg, loaded), "split": "test"}
    datamodule = build("dataset", OmegaConf.create(dataset))
    datamodule.prepare_data()
    images, _ = datamodule.load_split()
    if cfg.nll.n is not None and cfg.nll.n < len(images):
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.nll.n]]
    fixed = cfg.nll.variance or getattr(loaded.sampler, "variance", "fixed_small")
    variance = "learned_range" if loaded.diffusion.learned_variance else fixed
    log.info("bounding the NLL of %d test images (variance %s, stride %d)", len(images), variance, cfg.nll.stride)
    result = images_bound(
        loaded.net,
        loaded.diffusion,
        images,
        cfg.batch_size,
        cfg.nll.stride,
        cfg.seed,
        fixed,
        cfg.nll.clip_denoised,
        device,
        progress=lambda done: log.info("bounded %d / %d", done, len(images)),
    )
    title = f"{result.bpd:.3f} bits/dim on {result.n_images} images, step {loaded.global_step}, {variance}"
    figure = bound_terms_figure(
        result.timesteps, result.per_t, result.decoder, result.prior, result.num_timesteps, title
    )
    save_figure(figure, out_dir / "bound_terms.png")
    summary = {
        **result.as_dict(),
        "ckpt": str(cfg.ckpt),
        "global_step": loaded.global_step,
        "weights": cfg.weights,
        "variance": variance,
        "dataset": dataset["_target_"],
        "split": "test",
        "seed": cfg.seed,
        "device": str(device),
    }
    print(result.line())
    log.info("%s", result.line())
    with atomic_write(out_dir / "results.json", durable=False) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@entry_point("evaluate")  # a mistyped key: one line, exit status 2
@hydra.main(config_path=config_dir(), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    with user_errors(cleanup=discard_fresh_run_folder):  # one line on stderr, exit status 2
        result = evaluate(cfg)
        return result["fid"] if "fid" in result else result["bpd"]


if __name__ == "__main__":
    main()
