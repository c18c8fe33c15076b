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
from dataclasses import replace
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
from ddpm_lab.config.processes import start_ranks
from ddpm_lab.config.real_images import class_names_of, compared_dataset, dataset_source, images_of
from ddpm_lab.config.run_folder import discard_fresh_run_folder
from ddpm_lab.config.settings import EvaluateSettings, evaluate_settings
from ddpm_lab.diffusion.guidance import evaluations_per_step, has_null_class
from ddpm_lab.errors import user_errors
from ddpm_lab.metrics.cache import real_features
from ddpm_lab.metrics.class_mix import class_counts, class_mix, relabel, to_model_labels
from ddpm_lab.metrics.classifier import ClassifierFeatures
from ddpm_lab.metrics.features import FeatureExtractor
from ddpm_lab.metrics.nll import NLLSettings, check_bounded, model_bound
from ddpm_lab.metrics.reference_stats import read_reference_stats
from ddpm_lab.metrics.sample_scores import per_class_lines, sample_and_score, score_line
from ddpm_lab.metrics.scores import (
    FeatureSet,
    ScoreSettings,
    Statistics,
    format_floor,
    random_subset,
    real_floor,
    uncertainty_notes,
)

log = logging.getLogger(__name__)
GUIDANCE_PLOT = "fid_vs_guidance.png"
GRID = 64  # samples shown in samples.png


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
    """Sample ``n`` images (per guidance scale), score them against real images' features (or published reference
    statistics), with FID's spread and the real-vs-real floor; write the grids, the FID-vs-guidance plot of a sweep
    and ``results.json``. On several processes each draws its share and rank 0 scores and writes: the scores of one
    device, returned on every rank."""
    # Everything a user can get wrong is checked before any sampling: checkpoint, extractor weights, dataset.
    loaded = load_model(s.ckpt, device="cpu", weights=s.weights)
    null_class = has_null_class(loaded.net)
    scales = guidance_scales(s.guidance, loaded.num_classes, s.ckpt, s.scoring.guidance_rescale, null_class)
    outputs = ["results.json", *(grid_name(w) for w in scales or [None])] + ([GUIDANCE_PLOT] if scales else [])
    refuse_existing([out_dir / name for name in outputs])
    T = loaded.diffusion.num_timesteps
    sampler = loaded.sampler if s.sampler is None else check_sampler(s.sampler, T, process=loaded.diffusion)
    extractor: FeatureExtractor = build("features", s.features)
    reference = None
    if s.reference_stats is not None:
        reference = read_reference_stats(s.reference_stats, extractor.num_features, extractor.name)
    guided, classifier = scales is not None, isinstance(extractor, ClassifierFeatures)
    needs_data = reference is None or guided or classifier  # published statistics replace the real images
    dataset = compared_dataset(s.dataset, s.ckpt, s.cache_dir, loaded.config) if needs_data else None
    load = images_of(dataset) if dataset is not None else None

    ranks = start_ranks(s.processes)  # every check is done: the other processes start here
    sc = replace(s.scoring, device=ranks.device)
    loaded.net.to(ranks.device)
    labels, to_model = ranks.rank_zero_first(lambda: fit_to_training_split(s, loaded, extractor, dataset, guided))
    if classifier and ranks.is_zero:
        say(extractor.summary())
    if reference is not None:
        real, source = reference, {"reference_stats": str(s.reference_stats)}
    else:
        real, cache_path = real_features(lambda: load()[0], dataset, extractor, s.stats_dir, sc, ranks)
        source = {"real_stats": str(cache_path)}
    rows, steps = [], len(sampler.visited(loaded.diffusion))  # network evaluations per image and guidance half
    for w in scales or [None]:
        images, row = sample_and_score(
            loaded.net,
            loaded.diffusion,
            sampler,
            real,
            extractor,
            sc,
            labels,
            w,
            loaded.class_names,
            to_model,
            ranks,
            GRID,
        )
        if ranks.is_zero:
            row["nfe"] = steps * evaluations_per_step(w, sc.guidance_rescale)  # guided: both halves count
            save_uint8_grid(images, out_dir / grid_name(w), GRID)
            say(score_line(row, extractor.name, w))
            for line in per_class_lines(row):
                log.info("%s", line)
            rows.append(row)
    result = None
    with ranks.together():  # the other ranks wait for rank 0's files, and exit with its status
        if ranks.is_zero:
            how = {"sampler": repr(sampler), "features": extractor.name}  # nfe: the best row's
            result = summarise(s, sc, loaded, rows, real, labels, out_dir, extractor.name)
            result.update(provenance(s, loaded, dataset, how, source, ranks.world))
            if classifier:
                result["classifier"] = extractor.report()
            log.info("results in %s", save_json(result, out_dir / "results.json"))
    return ranks.from_rank_zero(result)


def summarise(
    s: EvaluateSettings,
    sc: ScoreSettings,
    loaded: LoadedModel,
    rows: list[dict[str, Any]],
    real: FeatureSet | Statistics,
    labels: torch.Tensor | None,
    out_dir: Path,
    features: str,
) -> dict[str, Any]:
    """The result of an FID evaluation: the one scale's row (or, with ``labels`` of a class-conditional
    checkpoint, the best of its scales, with every row and the FID-vs-guidance plot), how its uncertainties were
    measured, and the real-vs-real floor at the same n."""
    result = dict(min(rows, key=lambda r: r["fid"]))  # the one scale, or the best of the sweep
    if labels is not None:
        counts = labels.bincount(minlength=loaded.num_classes).tolist()
        result.update(
            per_guidance=rows,
            samples_per_class=dict(zip(loaded.class_titles, counts)),
            guidance_rescale=sc.guidance_rescale,
        )
        figure = guidance_figure(rows, title=f"{Path(s.ckpt).name}, {features} features")
        save_figure(figure, out_dir / GUIDANCE_PLOT)
    result["uncertainty"] = uncertainty_notes(sc, isinstance(real, Statistics))
    floor = None
    if s.floor and isinstance(real, FeatureSet):
        floor = real_floor(real, sc.n, sc.seed, sc.kid_subsets, sc.kid_subset_size)
        say(format_floor(floor))
    elif s.floor:
        say("real-vs-real floor: none with reference_stats= (it holds mu and sigma, no real images' features)")
    result["floor"] = floor
    return result


def fit_to_training_split(
    s: EvaluateSettings,
    loaded: LoadedModel,
    extractor: FeatureExtractor,
    dataset: dict[str, Any] | None,
    guided: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """What needs the dataset's labelled training split: the ``features=classifier`` network (trained, or read
    back), and for a ``guided`` (class-conditional) checkpoint the class of each sample, in the split's proportions
    (the same for every scale). Returns those labels (None: unconditional) and the table from the dataset's labels
    to the checkpoint's, matched by class name (None: compared as they are)."""
    classifier = isinstance(extractor, ClassifierFeatures)
    if not (classifier or guided):
        return None, None
    assert dataset is not None  # evaluate_fid reads it for these
    train_split = {**dataset, "split": "train"}
    source = dataset_source(dataset)
    to_model = to_model_labels(class_names_of(train_split), loaded.class_names, source, loaded.path) if guided else None
    images, labels = images_of(train_split)()
    if classifier:
        extractor.fit(images, labels, s.stats_dir, source=source)
    if not guided:
        return None, None
    counts = class_counts(relabel(labels, to_model), loaded.num_classes, source, loaded.path)
    if not classifier:
        log.info("class accuracy of the samples needs features=classifier")
    return class_mix(counts, s.scoring.n, s.scoring.seed), to_model


def provenance(
    s: EvaluateSettings,
    loaded: LoadedModel,
    dataset: dict[str, Any] | None,
    how: dict[str, Any],
    data: dict[str, Any],
    processes: int = 1,
) -> dict[str, Any]:
    """What ``results.json`` says the scores come from: the checkpoint and its weights, ``how`` it was scored, the
    dataset (and ``data`` about it), the seed, the device and the number of processes."""
    checkpoint = {"ckpt": s.ckpt, "global_step": loaded.global_step, "weights": s.weights}
    run = {"seed": s.scoring.seed, "device": str(s.scoring.device), "processes": processes}
    return {**checkpoint, **how, "dataset": None if dataset is None else dataset["_target_"], **data, **run}


def evaluate_nll(s: EvaluateSettings, nll: NLLSettings, out_dir: Path) -> dict[str, Any]:
    """``metrics=nll``: the variational bound on ``nll.n`` test images, its parts (``results.json``) and the
    figure of its terms against t (``bound_terms.png``); see ``ddpm_lab.metrics.nll``."""
    refuse_existing([out_dir / "results.json", out_dir / "bound_terms.png"])
    sc = s.scoring
    loaded = load_model(s.ckpt, device=sc.device, weights=s.weights)
    check_bounded(loaded.diffusion, s.ckpt)
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
