"""What each command reads from its config, parsed once: ``<command>_settings(cfg)`` checks every setting of
``sample``, ``evaluate``, ``visualize``, ``convert`` and ``shards`` (one line naming the key, before any file is
read) and returns one frozen settings object; the entry point then reads only that object (and Hydra's output
folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig

from ddpm_lab.artifacts.checkpoint import checkpoint_file
from ddpm_lab.artifacts.diffusers_io import require_diffusers
from ddpm_lab.artifacts.trained_model import WEIGHTS
from ddpm_lab.config.build import build
from ddpm_lab.config.checks import check_common, check_integer, pick_device
from ddpm_lab.config.guidance import parse_guidance
from ddpm_lab.config.real_images import stats_folder
from ddpm_lab.data.shards import check_output, import_litdata
from ddpm_lab.diffusion.samplers import VARIANCES
from ddpm_lab.errors import ConfigError, check_choice, check_flag, check_list, check_number
from ddpm_lab.metrics.nll import NLLSettings
from ddpm_lab.metrics.scores import ScoreSettings

# ------------------------------------------------------------------------------------------------ sample
SAMPLE_COUNTS = ("n", "batch_size", "strip_n", "gif_n", "gif_frames", "gif_ms")  # integers >= 1


@dataclass(frozen=True)
class SampleSettings:
    """Everything ``sample`` reads from its config, parsed once by :func:`sample_settings`."""

    ckpt: str
    weights: str
    device: torch.device
    n: int
    batch_size: int
    seed: int
    sampler: DictConfig | None  # None: the checkpoint's own
    timesteps: tuple[int, ...]  # progression strip columns, before they are fitted to T and the sampler
    strip_n: int
    gif_n: int
    gif_frames: int
    gif_ms: int
    classes: int | str | tuple[int | str, ...] | None  # one class or several, by index or name
    per_class: int | None
    guidance: float | None  # as given (None: 1)
    guidance_rescale: float


def sample_settings(cfg: DictConfig) -> SampleSettings:
    """The settings of ``sample`` itself, before the checkpoint is even read."""
    check_common(cfg)  # ckpt given, paths.output_root, seed
    for key in SAMPLE_COUNTS:
        check_integer(cfg, key, low=1)  # stored back as an int: n=64.0 works
    timesteps = check_list(cfg.timesteps, "timesteps", int, low=0, example="[999,500,0]")
    weights = check_choice(cfg.weights, "weights", WEIGHTS)
    device = pick_device(str(cfg.device))
    check_integer(cfg, "per_class", low=1, optional=True)
    check_number(cfg.get("guidance"), "guidance", float, optional=True)
    rescale = check_number(cfg.get("guidance_rescale", 0.0), "guidance_rescale", float, 0, 1)
    asked = cfg.get("class")
    return SampleSettings(
        **{key: cfg[key] for key in SAMPLE_COUNTS},
        ckpt=str(cfg.get("ckpt", "")),
        weights=weights,
        device=device,
        seed=int(cfg.seed),
        sampler=cfg.get("sampler"),
        timesteps=tuple(timesteps),
        classes=tuple(asked) if isinstance(asked, (ListConfig, list, tuple)) else asked,
        per_class=cfg.get("per_class"),
        guidance=cfg.get("guidance"),
        guidance_rescale=rescale,
    )


# ---------------------------------------------------------------------------------------------- evaluate
EVALUATE_METRICS = ("fid", "nll")
# each integer setting and its lowest value
EVALUATE_COUNTS = {"n": 2, "n_real": 2, "batch_size": 1, "kid_subsets": 1, "kid_subset_size": 2, "is_splits": 1}


@dataclass(frozen=True)
class EvaluateSettings:
    """Everything ``evaluate`` reads from its config, parsed once by :func:`evaluate_settings`."""

    ckpt: str
    weights: str
    scoring: ScoreSettings  # device, n, seed, batch size, KID/IS settings, guidance rescale
    guidance: tuple[float, ...] | None
    sampler: DictConfig | None  # None: the checkpoint's own
    features: DictConfig
    dataset: DictConfig | None  # None: the training run's
    cache_dir: str | None  # paths.cache_dir, for decoded datasets
    stats_dir: Path  # real-image features and classifiers
    nll: NLLSettings | None  # None: metrics=fid


def evaluate_settings(cfg: DictConfig) -> EvaluateSettings:
    """The settings of ``evaluate`` itself, before the checkpoint is even read."""
    check_common(cfg)  # ckpt given, paths.output_root, seed
    for key, low in EVALUATE_COUNTS.items():  # each stored back as an int: n=1000.0 works
        check_integer(cfg, key, low=low, optional=key == "n_real")
    weights = check_choice(cfg.weights, "weights", WEIGHTS)
    nll = None
    if check_choice(cfg.get("metrics", "fid"), "metrics", EVALUATE_METRICS) == "nll":
        check_integer(cfg, "nll.n", low=1, optional=True)
        check_integer(cfg, "nll.stride", low=1)
        check_flag(cfg.nll.clip_denoised, "nll.clip_denoised")
        if cfg.nll.variance is not None:
            check_choice(cfg.nll.variance, "nll.variance", VARIANCES)
        nll = NLLSettings(cfg.nll.n, cfg.nll.stride, cfg.nll.clip_denoised, cfg.nll.variance)
    device = pick_device(str(cfg.device))
    guidance = parse_guidance(cfg.get("guidance"))
    rescale = check_number(cfg.guidance_rescale, "guidance_rescale", float, low=0, high=1)
    counts = {key: cfg[key] for key in EVALUATE_COUNTS}
    scoring = ScoreSettings(device=device, seed=int(cfg.seed), guidance_rescale=rescale, **counts)
    return EvaluateSettings(
        ckpt=str(cfg.ckpt),
        weights=weights,
        scoring=scoring,
        guidance=None if guidance is None else tuple(guidance),
        sampler=cfg.get("sampler"),
        features=cfg.features,
        dataset=cfg.get("dataset"),
        cache_dir=cfg.paths.get("cache_dir"),
        stats_dir=stats_folder(cfg.cache_dir, cfg.paths.get("cache_dir")),
        nll=nll,
    )


# --------------------------------------------------------------------------------------------- visualize
VISUALIZE_COUNTS = ("n_images", "gif_frames", "gif_ms", "html_frames")  # integers >= 1


@dataclass(frozen=True)
class VisualizeSettings:
    """Everything ``visualize`` reads from its config, parsed once by :func:`visualize_settings`."""

    seed: int
    n_images: int
    timesteps: tuple[int, ...]  # strip columns, before they are fitted to T
    gif_frames: int
    gif_ms: int
    html: bool
    html_frames: int
    ckpt: str | None  # with html: the model whose x̂_0 and reverse process the explorer shows
    schedule: DictConfig
    data: pl.LightningDataModule  # built: its constructor has checked dataset.*
    dataset: str  # its _target_, for messages


def visualize_settings(cfg: DictConfig) -> VisualizeSettings:
    """The settings of ``visualize``, its schedule and its dataset, before any image is read or file written."""
    check_common(cfg)  # dataset.root given, paths.output_root, seed
    for key in VISUALIZE_COUNTS:
        check_integer(cfg, key, low=1)  # stored back as an int: n_images=4.0 works
    timesteps = check_list(cfg.timesteps, "timesteps", int, low=0, example="[0,100,999]")
    check_flag(cfg.html, "html")
    if cfg.ckpt is not None:
        if not cfg.html:
            raise ConfigError("ckpt= is read by the HTML explorer only: add html=true (or leave ckpt out)")
        checkpoint_file(cfg.ckpt)
    return VisualizeSettings(
        **{key: cfg[key] for key in VISUALIZE_COUNTS},
        seed=int(cfg.seed),
        timesteps=tuple(timesteps),
        html=cfg.html,
        ckpt=None if cfg.ckpt is None else str(cfg.ckpt),
        schedule=cfg.schedule,
        data=build("dataset", cfg.dataset),  # the data module's constructor checks dataset.* values
        dataset=str(cfg.dataset._target_),
    )


# ----------------------------------------------------------------------------------------------- convert
USAGE = (
    "pass from_diffusers=DIR out=FILE.ckpt (diffusers -> ddpm_lab) or ckpt=FILE.ckpt to_diffusers=DIR "
    "(ddpm_lab -> diffusers)"
)


def _given(cfg: DictConfig, key: str) -> bool:
    value = cfg.get(key)
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"{key}= must be a path, got {value!r}: {USAGE}")
    return value is not None


@dataclass(frozen=True)
class ConvertSettings:
    """Everything ``convert`` reads from its config, parsed once by :func:`convert_settings`."""

    direction: str  # import (diffusers -> ddpm_lab) | export (ddpm_lab -> diffusers)
    source: str  # from_diffusers= folder | ckpt= file
    target: str  # out= file | to_diffusers= folder
    weights: str  # export: auto | ema | raw
    fid: float | None  # export: an FID for the model card


def convert_settings(cfg: DictConfig) -> ConvertSettings:
    """The direction asked for and its settings, checked before anything is read."""
    given = {key for key in ("from_diffusers", "out", "ckpt", "to_diffusers") if _given(cfg, key)}
    if given == {"from_diffusers", "out"}:
        direction, source, target = "import", cfg.from_diffusers, cfg.out
    elif given == {"ckpt", "to_diffusers"}:
        direction, source, target = "export", cfg.ckpt, cfg.to_diffusers
    else:
        shown = ", ".join(f"{k}=" for k in sorted(given)) or "nothing"
        raise ConfigError(f"convert got {shown}: {USAGE}")
    weights = check_choice(cfg.weights, "weights", WEIGHTS)
    fid = check_number(cfg.fid, "fid", float, low=0, optional=True)
    require_diffusers()
    return ConvertSettings(direction, str(source), str(target), str(weights), fid)


# ------------------------------------------------------------------------------------------------ shards
CHUNK_BYTES = re.compile(r"^\d+(\.\d+)?\s*[KMGT]?B$", re.IGNORECASE)


@dataclass(frozen=True)
class ShardsSettings:
    """Everything ``shards`` reads from its config besides the dataset, parsed once by :func:`shards_settings`."""

    out: str  # the folder (or object-store URL) to write
    chunk_bytes: str | int  # litdata's chunk size: bytes, or "64MB"
    workers: int  # writer processes


def shards_settings(cfg: DictConfig) -> ShardsSettings:
    """The output and writer settings, checked (and litdata found) before the dataset is read."""
    out = cfg.get("out")
    if out is None or not (isinstance(out, str) and out.strip()):
        shown = "is not set" if out is None else f"must be a folder, got {out!r}"
        raise ConfigError(f"out= {shown}: pass out=<new folder> (or an s3://, gs://, ... URL) for the shards")
    check_integer(cfg, "workers", low=1)
    chunk = cfg.get("chunk_bytes")
    if isinstance(chunk, bool) or not (
        (isinstance(chunk, int) and chunk > 0) or (isinstance(chunk, str) and CHUNK_BYTES.match(chunk))
    ):
        raise ConfigError(f"chunk_bytes={chunk!r} is not a size: pass bytes (67108864) or e.g. 64MB")
    if str(cfg.dataset.get("_target_", "")).endswith(".StreamingDataModule"):
        raise ConfigError("dataset=streaming is shards already: pass the dataset they are written from")
    import_litdata()  # one line when it is missing
    check_output(out)
    return ShardsSettings(out=out, chunk_bytes=chunk, workers=int(cfg.workers))
