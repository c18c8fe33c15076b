"""Evaluation entry point: ``python -m ddpm_lab.evaluate ckpt=PATH [n=1000] [sampler=...] [features=...]``.

Samples ``n`` images from a checkpoint and scores them (FID, KID, IS where the extractor has class logits)
against the dataset's real images. A class-conditional checkpoint is sampled per guidance scale
(``guidance=0,1,2,4``) with classes in the dataset's proportions; ``features=classifier`` adds their class
accuracy. ``metrics=nll`` instead bounds the likelihood of the test split in bits/dim.
``evaluate(cfg)`` does the work; ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.artifacts.allow_list import check_safe, resolve_references
from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.artifacts.cache_dir import FID_STATS, cache_folder
from ddpm_lab.artifacts.checkpoint import WEIGHTS, LoadedModel, checkpoint_file, load_model
from ddpm_lab.artifacts.figures import bound_terms_figure, guidance_figure, save_figure
from ddpm_lab.artifacts.images import image_grid, refuse_existing, save_png, to_uint8
from ddpm_lab.config import build, check_sampler, config_dir, pick_device
from ddpm_lab.config.checks import check_common, check_integer
from ddpm_lab.config.entry import entry_point
from ddpm_lab.config.overrides import read_yaml
from ddpm_lab.config.run_folder import discard_fresh_run_folder
from ddpm_lab.diffusion import Sampler, generate_batches
from ddpm_lab.diffusion.samplers import VARIANCES
from ddpm_lab.errors import ConfigError, check_choice, check_flag, check_list, check_number, user_errors
from ddpm_lab.metrics import (
    ClassifierFeatures,
    FeatureExtractor,
    FeatureSet,
    cache_key,
    cached_features,
    chunks,
    class_accuracy,
    extract_features,
    format_scores,
    images_bound,
    scores,
)

log = logging.getLogger(__name__)
METRICS = ("fid", "nll")

GUIDANCE_PLOT = "fid_vs_guidance.png"


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


def stats_folder(cfg: DictConfig) -> Path:
    """Where real-image statistics (and the ``features=classifier`` networks) are cached."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return cache_folder(cfg.paths.get("cache_dir"), FID_STATS)


def training_images(dataset: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's labelled training split: uint8 images and labels (−1: none), for the classifier and class mix."""
    datamodule = build("dataset", OmegaConf.create({**dataset, "split": "train"}))
    datamodule.prepare_data()
    return datamodule.load_split()


def fit_classifier(
    cfg: DictConfig, images: torch.Tensor, labels: torch.Tensor, extractor: ClassifierFeatures, source: str
) -> None:
    """Train (or read back) the ``features=classifier`` network on the dataset's own labelled training images."""
    extractor.fit(images, labels, stats_folder(cfg), source=source)
    line = extractor.summary()
    log.info("%s", line)
    print(line)


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
    path = stats_folder(cfg) / (
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
    parse_guidance(cfg.get("guidance"))
    check_number(cfg.guidance_rescale, "guidance_rescale", float, low=0, high=1)
    cache_dir = cfg.cache_dir
    if cache_dir is not None and (
        not isinstance(cache_dir, str) or not cache_dir.strip() or Path(cache_dir).expanduser().is_file()
    ):
        raise ConfigError(
            f"cache_dir must be a folder or null (<paths.cache_dir>/fid_stats), got {cache_dir!r}: "
            "set cache_dir=<folder>"
        )


def parse_guidance(value: Any) -> list[float] | None:
    """``guidance``: null, one scale w >= 0 or a list of them (``guidance=0,1,2,4``), as a list (None: null)."""
    if value is None:
        return None
    items = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]
    try:
        return check_list(items, "guidance", float, low=0)
    except ConfigError:
        shown = ",".join(map(str, items)) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else value
        raise ConfigError(
            f"guidance must be a number >= 0 or a list of them, got {shown!r}: set guidance=2 or guidance=0,1,2,4"
        ) from None


def guidance_scales(cfg: DictConfig, loaded: LoadedModel) -> list[float] | None:
    """The guidance scales w to evaluate: None for an unconditional checkpoint (which takes none), else a list."""
    scales = parse_guidance(cfg.get("guidance"))
    if not loaded.num_classes:
        if scales is not None:
            raise ConfigError(
                f"guidance={','.join(f'{w:g}' for w in scales)} needs a class-conditional checkpoint, but "
                f"{cfg.ckpt} is unconditional: leave guidance out (or train one with conditioning=class)"
            )
        return None
    return [1.0] if scales is None else scales  # null: the conditional model, unguided


def class_mix(counts: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` labels in the proportions ``counts`` (largest-remainder rounding), in a seeded random order."""
    share = counts.double() / counts.sum() * n
    per_class = share.floor().long()
    per_class[torch.argsort(share - per_class, descending=True, stable=True)[: n - int(per_class.sum())]] += 1
    labels = torch.repeat_interleave(torch.arange(len(counts)), per_class)
    return labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def class_counts(labels: torch.Tensor, loaded: LoadedModel, source: str) -> torch.Tensor:
    """Images per class of the training labels, for a checkpoint of ``loaded.num_classes`` classes."""
    labels = labels[labels >= 0]
    if len(labels) and int(labels.max()) >= loaded.num_classes:
        raise ConfigError(
            f"{source} has labels up to {int(labels.max())}, but {loaded.path} knows {loaded.num_classes} "
            f"class(es): pass the dataset it was trained on (dataset=... dataset.root=...)"
        )
    if not len(labels):
        log.warning("%s has no class labels: drawing the %d classes uniformly", source, loaded.num_classes)
        return torch.ones(loaded.num_classes, dtype=torch.long)
    return torch.bincount(labels, minlength=loaded.num_classes)


def generate_uint8(
    loaded: LoadedModel,
    sampler: Sampler,
    cfg: DictConfig,
    device: torch.device,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """``cfg.n`` uint8 samples on the CPU from ``cfg.seed`` (see ``ddpm_lab.diffusion.generate``).

    ``labels``: the class of each image, for a class-conditional checkpoint, guided with scale ``guidance``.
    """
    out = []
    extra = {} if labels is None else {"labels": labels, "guidance": guidance, "guidance_rescale": cfg.guidance_rescale}
    for batch in generate_batches(
        loaded.net,
        loaded.diffusion,
        cfg.n,
        sampler=sampler,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        device=device,
        **extra,
    ):
        out.append(to_uint8(batch.images).cpu())
        log.info("sampled %d / %d", batch.start + len(batch.images), cfg.n)
    return torch.cat(out)


def score_samples(
    cfg: DictConfig,
    real: FeatureSet,
    images: torch.Tensor,
    extractor: FeatureExtractor,
    device: torch.device,
    labels: torch.Tensor | None = None,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """FID/KID(/IS) of uint8 samples; with labels and ``features=classifier`` also their class accuracy."""
    fake = extract_features(extractor, chunks(images, cfg.batch_size), device)
    result = scores(
        real,
        fake,
        kid_subsets=cfg.kid_subsets,
        kid_subset_size=cfg.kid_subset_size,
        is_splits=cfg.is_splits,
        seed=cfg.seed,
    )
    if labels is not None and isinstance(extractor, ClassifierFeatures):
        result.update(class_accuracy(extractor.predict(images), labels, class_names))
    return result


def grid_name(guidance: float | None) -> str:
    """``samples.png``, or ``samples_guidance_<w>.png`` per scale of a class-conditional checkpoint."""
    return "samples.png" if guidance is None else f"samples_guidance_{guidance:g}.png"


def sample_grid(images: torch.Tensor, path: Path) -> None:
    save_png(image_grid(images[:64].float() / 127.5 - 1.0), path)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Sample ``cfg.n`` images from ``cfg.ckpt`` (per guidance scale), score them, write ``results.json``."""
    check(cfg)
    checkpoint_file(cfg.ckpt)
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("metrics", "fid") == "nll":
        return evaluate_nll(cfg, out_dir)
    device = pick_device(str(cfg.device))
    # Everything a user can get wrong is checked before any sampling: checkpoint, extractor weights, dataset.
    loaded = load_model(cfg.ckpt, device=device, weights=cfg.weights)
    scales = guidance_scales(cfg, loaded)
    outputs = ["results.json", *(grid_name(w) for w in scales or [None])] + ([GUIDANCE_PLOT] if scales else [])
    refuse_existing([out_dir / name for name in outputs])
    if cfg.get("sampler") is not None:
        check_sampler(cfg.sampler, loaded.diffusion.num_timesteps)
    extractor: FeatureExtractor = build("features", cfg.features)
    sampler: Sampler = build("sampler", cfg.sampler) if cfg.get("sampler") is not None else loaded.sampler
    dataset = dataset_config(cfg, loaded)
    source = dataset["_target_"].rsplit(".", 1)[-1] + (f" at {dataset['root']}" if dataset.get("root") else "")
    labels = None
    if isinstance(extractor, ClassifierFeatures) or scales is not None:
        train_images, train_labels = training_images(dataset)
        if isinstance(extractor, ClassifierFeatures):
            fit_classifier(cfg, train_images, train_labels, extractor, source)
        if scales is not None:  # the classes the model saw, in their proportions; the same for every scale
            labels = class_mix(class_counts(train_labels, loaded, source), cfg.n, cfg.seed)
            if not isinstance(extractor, ClassifierFeatures):
                log.info("class accuracy of the samples needs features=classifier")
        del train_images

    real, cache_path = real_features(cfg, dataset, extractor, device)
    rows = []
    for w in scales or [None]:
        started = time.perf_counter()
        images = generate_uint8(loaded, sampler, cfg, device, labels, 1.0 if w is None else w)
        row: dict[str, Any] = {"guidance": w} if w is not None else {}
        row["sampling_seconds"] = round(time.perf_counter() - started, 3)
        row.update(score_samples(cfg, real, images, extractor, device, labels, loaded.class_names))
        sample_grid(images, out_dir / grid_name(w))
        line = format_scores(row, extractor.name)
        if "class_accuracy" in row:
            line += f", class accuracy {100 * row['class_accuracy']:.2f}%"
        line = line if w is None else f"guidance {w:g}: {line}"
        log.info("%s", line)
        print(line)
        for name, per in row.get("per_class", {}).items():
            log.info("  class %s: %d samples, accuracy %s", name, per["n"], per["accuracy"])
        rows.append(row)
    result = dict(min(rows, key=lambda r: r["fid"]))  # the one scale, or the best of the sweep
    if scales is not None:
        result.update(
            per_guidance=rows,
            samples_per_class=dict(zip(class_keys(loaded), labels.bincount(minlength=loaded.num_classes).tolist())),
            guidance_rescale=cfg.guidance_rescale,
        )
        save_figure(
            guidance_figure(rows, title=f"{Path(cfg.ckpt).name}, {extractor.name} features"), out_dir / GUIDANCE_PLOT
        )
    result.update(
        ckpt=str(cfg.ckpt),
        global_step=loaded.global_step,
        weights=cfg.weights,
        sampler=repr(sampler),
        nfe=len(sampler.timesteps(loaded.diffusion.num_timesteps)),  # model evaluations per image
        features=extractor.name,
        dataset=dataset["_target_"],
        real_stats=str(cache_path),
        seed=cfg.seed,
        device=str(device),
    )
    if isinstance(extractor, ClassifierFeatures):
        result["classifier"] = extractor.report()
    path = out_dir / "results.json"
    with atomic_write(path, durable=False) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    log.info("results in %s", path)
    return result


def class_keys(loaded: LoadedModel) -> list[str]:
    return loaded.class_names or [str(k) for k in range(loaded.num_classes)]


def guidance_as_list(argv: list[str]) -> list[str]:
    """``guidance=0,1,2,4`` (Hydra's sweep syntax) as one run over the list ``[0,1,2,4]``, unless ``--multirun``."""
    if any(a in ("-m", "--multirun") for a in argv):
        return argv
    return [f"guidance=[{a[9:]}]" if re.fullmatch(r"guidance=[^\[\]'\"]*,[^\[\]'\"]*", a) else a for a in argv]


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
def _main(cfg: DictConfig) -> float:
    with user_errors(cleanup=discard_fresh_run_folder):  # one line on stderr, exit status 2
        result = evaluate(cfg)
        return result["fid"] if "fid" in result else result["bpd"]


def main() -> None:
    """``python -m ddpm_lab.evaluate ...`` (the Hydra entry point, with ``guidance=0,1,2`` read as a list)."""
    sys.argv[1:] = guidance_as_list(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
