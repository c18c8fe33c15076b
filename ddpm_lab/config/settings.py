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
from ddpm_lab.config.checks import check_common, check_integer, check_required
from ddpm_lab.config.guidance import parse_guidance
from ddpm_lab.config.processes import Processes, processes_settings
from ddpm_lab.config.real_images import stats_folder
from ddpm_lab.data.shards import check_output, import_litdata
from ddpm_lab.diffusion.samplers import VARIANCES
from ddpm_lab.errors import ConfigError, check_choice, check_flag, check_list, check_number
from ddpm_lab.metrics.nll import NLLSettings
from ddpm_lab.metrics.scores import ScoreSettings
from ddpm_lab.models.power_ema import check_sigma_rels

# ------------------------------------------------------------------------------------------------ sample
SAMPLE_COUNTS = ("n", "batch_size", "strip_n", "gif_n", "gif_frames", "gif_ms")  # integers >= 1


@dataclass(frozen=True)
class SampleSettings:
    """Everything ``sample`` reads from its config, parsed once by :func:`sample_settings`."""

    ckpt: str
    weights: str
    processes: Processes  # device, devices, num_nodes
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

    @property
    def device(self) -> torch.device:
        """Where one process samples (``device=``)."""
        return self.processes.device


def sample_settings(cfg: DictConfig) -> SampleSettings:
    """The settings of ``sample`` itself, before the checkpoint is even read."""
    check_common(cfg)  # ckpt given, paths.output_root, seed
    for key in SAMPLE_COUNTS:
        check_integer(cfg, key, low=1)  # stored back as an int: n=64.0 works
    timesteps = check_list(cfg.timesteps, "timesteps", int, low=0, example="[999,500,0]")
    weights = check_choice(cfg.weights, "weights", WEIGHTS)
    processes = processes_settings(cfg)
    check_integer(cfg, "per_class", low=1, optional=True)
    check_number(cfg.get("guidance"), "guidance", float, optional=True)
    rescale = check_number(cfg.get("guidance_rescale", 0.0), "guidance_rescale", float, 0, 1)
    asked = cfg.get("class")
    return SampleSettings(
        **{key: cfg[key] for key in SAMPLE_COUNTS},
        ckpt=str(cfg.get("ckpt", "")),
        weights=weights,
        processes=processes,
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
EVALUATE_COUNTS = {
    "n": 2,
    "n_real": 2,
    "batch_size": 1,
    "kid_subsets": 1,
    "kid_subset_size": 2,
    "is_splits": 1,
    "bootstrap": 0,
}


@dataclass(frozen=True)
class EvaluateSettings:
    """Everything ``evaluate`` reads from its config, parsed once by :func:`evaluate_settings`."""

    ckpt: str
    weights: str
    scoring: ScoreSettings  # device, n, seed, batch size, KID/IS settings, guidance rescale, bootstrap
    processes: Processes  # device, devices, num_nodes
    floor: bool  # also the real-vs-real floor at n
    reference_stats: str | None  # published mu/sigma (.npz) instead of the real images' features
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
    processes = processes_settings(cfg)
    if nll is not None and processes.world > 1:
        raise ConfigError("metrics=nll runs in one process: set devices=1 num_nodes=1 (or metrics=fid)")
    guidance = parse_guidance(cfg.get("guidance"))
    rescale = check_number(cfg.guidance_rescale, "guidance_rescale", float, low=0, high=1)
    if nll is not None:
        refuse_sampling_options(cfg, guidance, rescale)
    if cfg.bootstrap == 1:
        raise ConfigError("bootstrap=1 gives no spread: set bootstrap=0 (none) or a number of resamples >= 2")
    reference = _reference_stats(cfg, nll is not None)
    counts = {key: cfg[key] for key in EVALUATE_COUNTS}
    scoring = ScoreSettings(device=processes.device, seed=int(cfg.seed), guidance_rescale=rescale, **counts)
    return EvaluateSettings(
        ckpt=str(cfg.ckpt),
        weights=weights,
        scoring=scoring,
        processes=processes,
        floor=check_flag(cfg.floor, "floor"),
        reference_stats=reference,
        guidance=None if guidance is None else tuple(guidance),
        sampler=cfg.get("sampler"),
        features=cfg.features,
        dataset=cfg.get("dataset"),
        cache_dir=cfg.paths.get("cache_dir"),
        stats_dir=stats_folder(cfg.cache_dir, cfg.paths.get("cache_dir")),
        nll=nll,
    )


def refuse_sampling_options(cfg: DictConfig, guidance: list[float] | None, rescale: float) -> None:
    """``metrics=nll`` bounds the likelihood of the checkpoint's own model on real images: it samples nothing, so
    options that only shape samples would be ignored; each is refused, naming it."""
    given = {
        "guidance": None if guidance is None else ",".join(f"{w:g}" for w in guidance),
        "guidance_rescale": f"{rescale:g}" if rescale else None,
        "sampler": str(cfg.sampler.get("_target_", "")).rsplit(".", 1)[-1] if cfg.get("sampler") is not None else None,
        "n_real": cfg.get("n_real"),
    }
    for key, value in given.items():
        if value is not None:
            raise ConfigError(
                f"{key}={value} does not apply to metrics=nll (the bound of the checkpoint's own, unguided model on "
                "test images; its variance: nll.variance): leave it out, or use metrics=fid"
            )


def _reference_stats(cfg: DictConfig, nll: bool) -> str | None:
    """``reference_stats``: a file name, read by ``metrics=fid`` alone and replacing the real images (so no
    ``n_real``); the file itself is checked when the extractor is built."""
    path = cfg.get("reference_stats")
    if path is None:
        return None
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"reference_stats must be the path of an .npz of mu and sigma, got {path!r}")
    if nll:
        raise ConfigError("reference_stats= is read by metrics=fid only: leave it out with metrics=nll")
    if cfg.get("n_real") is not None:
        raise ConfigError(
            "n_real= picks real images, but reference_stats= replaces them with published statistics: leave one out"
        )
    return path


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
    "pass from_diffusers=DIR out=FILE.ckpt (diffusers -> ddpm_lab; DIR: a folder or a Hugging Face Hub id such as "
    "google/ddpm-cifar10-32) or ckpt=FILE.ckpt to_diffusers=DIR (ddpm_lab -> diffusers)"
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
    source: str  # from_diffusers= folder or Hub id | ckpt= file
    target: str  # out= file | to_diffusers= folder
    weights: str  # export: auto | ema | raw
    fid: float | None  # export: an FID for the model card
    revision: str | None  # import from the Hub: a branch, tag or commit (None: main)


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
    revision = _revision(cfg.get("revision"), direction)
    require_diffusers()
    return ConvertSettings(direction, str(source), str(target), str(weights), fid, revision)


def _revision(value: object, direction: str) -> str | None:
    """``revision=``: a branch, tag or commit of a Hub model, for ``from_diffusers=`` only."""
    if value is None:
        return None
    if direction != "import":
        raise ConfigError(
            f"revision={value} picks a version of a Hugging Face Hub model for from_diffusers=: drop it when exporting"
        )
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise ConfigError(f"revision= must be a branch, tag or commit of a Hub model, got {value!r}: say revision=main")
    return str(value).strip()


# --------------------------------------------------------------------------------------------------- ema
@dataclass(frozen=True)
class EmaSettings:
    """Everything ``ema`` reads from its config, parsed once by :func:`ema_settings`."""

    ckpt: str
    sigma_rels: tuple[float, ...]
    snapshots: str | None  # None: <run>/posthoc_ema beside the checkpoint's folder
    out: str | None  # None: the snapshots' folder


def _optional_path(cfg: DictConfig, key: str) -> str | None:
    value = cfg.get(key)
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"{key}= must be a path, got {value!r}: pass {key}=<folder> or leave it out")
    return None if value is None else str(value)


def ema_settings(cfg: DictConfig) -> EmaSettings:
    """``ckpt``, the EMA lengths asked for and the folders, checked before any file is read."""
    check_required(cfg)  # ckpt given
    ckpt = _optional_path(cfg, "ckpt")
    sigma_rels = check_sigma_rels(cfg.get("sigma_rel"), "sigma_rel")
    out = _optional_path(cfg, "out")
    return EmaSettings(str(ckpt), sigma_rels, _optional_path(cfg, "snapshots"), out)


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
