"""Evaluation entry point: ``python -m ddpm_lab.evaluate ckpt=PATH [n=1000] [sampler=...] [features=...]``.

Samples ``n`` images from a checkpoint and scores them (FID, KID, IS where the extractor has class logits)
against the dataset's real images. A class-conditional checkpoint is sampled per guidance scale
(``guidance=0,1,2,4``) with classes in the dataset's proportions; ``features=classifier`` adds their class
accuracy. ``metrics=nll`` instead bounds the likelihood of the test split in bits/dim.
``evaluate_settings(cfg)`` (``ddpm_lab.config.settings``) parses the settings once, ``evaluate(cfg)`` does
the work; ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from ddpm_lab.artifacts.atomic import save_json
from ddpm_lab.artifacts.checkpoint import checkpoint_file
from ddpm_lab.artifacts.figures import bound_terms_figure, guidance_figure, save_figure
from ddpm_lab.artifacts.images import refuse_existing
from ddpm_lab.artifacts.samples import grid_name, save_uint8_grid
from ddpm_lab.artifacts.trained_model import LoadedModel, load_model
from ddpm_lab.config import build, check_sampler, config_dir
from ddpm_lab.config.entry import entry_point
from ddpm_lab.config.guidance import guidance_as_list, guidance_scales
from ddpm_lab.config.hydra_callbacks import is_multirun, multirun_job
from ddpm_lab.config.real_images import compared_dataset, dataset_source, images_of
from ddpm_lab.config.run_folder import discard_fresh_run_folder
from ddpm_lab.config.settings import EvaluateSettings, evaluate_settings
from ddpm_lab.errors import user_errors
from ddpm_lab.metrics.cache import real_features
from ddpm_lab.metrics.class_mix import class_counts, class_mix
from ddpm_lab.metrics.classifier import ClassifierFeatures
from ddpm_lab.metrics.features import FeatureExtractor
from ddpm_lab.metrics.nll import NLLSettings, model_bound
from ddpm_lab.metrics.sample_scores import per_class_lines, sample_and_score, score_line
from ddpm_lab.metrics.scores import random_subset

log = logging.getLogger(__name__)
GUIDANCE_PLOT = "fid_vs_guidance.png"


def say(line: str) -> None:
    """A result line: in the log and on stdout."""
    log.info("%s", line)
    print(line)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``ckpt`` as ``metrics`` says (FID/KID/IS of its samples, or the NLL bound); write ``results.json``."""
    s = evaluate_settings(cfg)
    checkpoint_file(s.ckpt)
    out_dir = Path(cfg.paths.output_dir)  # the run folder Hydra made (it resolves only inside a run)
    return evaluate_fid(s, out_dir) if s.nll is None else evaluate_nll(s, s.nll, out_dir)


def evaluate_fid(s: EvaluateSettings, out_dir: Path) -> dict[str, Any]:
    """Sample ``n`` images (per guidance scale), score them against real images' features, write the grids, the
    FID-vs-guidance plot of a sweep and ``results.json``."""
    # Everything a user can get wrong is checked before any sampling: checkpoint, extractor weights, dataset.
    sc = s.scoring
    loaded = load_model(s.ckpt, device=sc.device, weights=s.weights)
    scales = guidance_scales(s.guidance, loaded.num_classes, s.ckpt)
    outputs = ["results.json", *(grid_name(w) for w in scales or [None])] + ([GUIDANCE_PLOT] if scales else [])
    refuse_existing([out_dir / name for name in outputs])
    T = loaded.diffusion.num_timesteps
    sampler = loaded.sampler if s.sampler is None else check_sampler(s.sampler, T)
    extractor: FeatureExtractor = build("features", s.features)
    dataset = compared_dataset(s.dataset, s.ckpt, s.cache_dir, loaded.config)
    labels = fit_to_training_split(s, loaded, extractor, dataset, scales is not None)
    load = images_of(dataset)
    real, cache_path = real_features(lambda: load()[0], dataset, extractor, s.stats_dir, sc)
    rows = []
    for w in scales or [None]:
        images, row = sample_and_score(
            loaded.net, loaded.diffusion, sampler, real, extractor, sc, labels, w, loaded.class_names
        )
        save_uint8_grid(images, out_dir / grid_name(w))
        say(score_line(row, extractor.name, w))
        for line in per_class_lines(row):
            log.info("%s", line)
        rows.append(row)
    result = dict(min(rows, key=lambda r: r["fid"]))  # the one scale, or the best of the sweep
    if scales is not None:
        counts = labels.bincount(minlength=loaded.num_classes).tolist()
        result.update(
            per_guidance=rows,
            samples_per_class=dict(zip(loaded.class_titles, counts)),
            guidance_rescale=sc.guidance_rescale,
        )
        figure = guidance_figure(rows, title=f"{Path(s.ckpt).name}, {extractor.name} features")
        save_figure(figure, out_dir / GUIDANCE_PLOT)
    how = {"sampler": repr(sampler), "nfe": len(sampler.timesteps(T)), "features": extractor.name}  # nfe: per image
    result.update(provenance(s, loaded, dataset, how, {"real_stats": str(cache_path)}))
    if isinstance(extractor, ClassifierFeatures):
        result["classifier"] = extractor.report()
    log.info("results in %s", save_json(result, out_dir / "results.json"))
    return result


def fit_to_training_split(
    s: EvaluateSettings, loaded: LoadedModel, extractor: FeatureExtractor, dataset: dict[str, Any], guided: bool
) -> torch.Tensor | None:
    """What needs the dataset's labelled training split: the ``features=classifier`` network (trained, or read
    back), and for a ``guided`` (class-conditional) checkpoint the class of each sample, in the split's proportions
    (the same for every scale). Returns those labels (None: unconditional)."""
    classifier = isinstance(extractor, ClassifierFeatures)
    if not (classifier or guided):
        return None
    images, labels = images_of({**dataset, "split": "train"})()
    source = dataset_source(dataset)
    if classifier:
        extractor.fit(images, labels, s.stats_dir, source=source)
        say(extractor.summary())
    if not guided:
        return None
    mix = class_mix(class_counts(labels, loaded.num_classes, source, loaded.path), s.scoring.n, s.scoring.seed)
    if not classifier:
        log.info("class accuracy of the samples needs features=classifier")
    return mix


def provenance(
    s: EvaluateSettings, loaded: LoadedModel, dataset: dict[str, Any], how: dict[str, Any], data: dict[str, Any]
) -> dict[str, Any]:
    """What ``results.json`` says the scores come from: the checkpoint and its weights, ``how`` it was scored, the
    dataset (and ``data`` about it), the seed and the device."""
    checkpoint = {"ckpt": s.ckpt, "global_step": loaded.global_step, "weights": s.weights}
    run = {"seed": s.scoring.seed, "device": str(s.scoring.device)}
    return {**checkpoint, **how, "dataset": dataset["_target_"], **data, **run}


def evaluate_nll(s: EvaluateSettings, nll: NLLSettings, out_dir: Path) -> dict[str, Any]:
    """``metrics=nll``: the variational bound on ``nll.n`` test images, its parts (``results.json``) and the
    figure of its terms against t (``bound_terms.png``); see ``ddpm_lab.metrics.nll``."""
    refuse_existing([out_dir / "results.json", out_dir / "bound_terms.png"])
    sc = s.scoring
    loaded = load_model(s.ckpt, device=sc.device, weights=s.weights)
    dataset = {**compared_dataset(s.dataset, s.ckpt, s.cache_dir, loaded.config), "split": "test"}
    images = random_subset(images_of(dataset)()[0], nll.n, sc.seed)
    result, variance = model_bound(*loaded, images, nll, sc.batch_size, sc.seed, sc.device)  # the checkpoint's sampler
    title = f"{result.bpd:.3f} bits/dim on {result.n_images} images, step {loaded.global_step}, {variance}"
    figure = bound_terms_figure(
        result.timesteps, result.per_t, result.decoder, result.prior, result.num_timesteps, title
    )
    save_figure(figure, out_dir / "bound_terms.png")
    summary = {**result.as_dict(), **provenance(s, loaded, dataset, {"variance": variance}, {"split": "test"})}
    print(result.line())
    log.info("%s", result.line())
    save_json(summary, out_dir / "results.json")
    return summary


@entry_point("evaluate")  # a mistyped key: one line, exit status 2
@hydra.main(config_path=config_dir(), config_name="evaluate", version_base="1.3")
def _main(cfg: DictConfig) -> float:
    if is_multirun():  # a mistake fails its job alone, named; the sweep goes on
        result = multirun_job(lambda: evaluate(cfg))
        return float("nan") if result is None else result["fid"] if "fid" in result else result["bpd"]
    with user_errors(cleanup=discard_fresh_run_folder):  # one line on stderr, exit status 2
        result = evaluate(cfg)
        return result["fid"] if "fid" in result else result["bpd"]


def main() -> None:
    """``python -m ddpm_lab.evaluate ...`` (the Hydra entry point, with ``guidance=0,1,2`` read as a list)."""
    sys.argv[1:] = guidance_as_list(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
