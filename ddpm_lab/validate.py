"""Check a composed config before any work starts: every mistake becomes one :class:`ConfigError` line.

Cheap checks only: plain value checks, the β schedule and sampler (T-sized tensors), and the network built on
the ``meta`` device (shapes, no memory), so a typo costs seconds. Entry points call these, then do the work.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.errors import ConfigError

__all__ = [
    "validate_train_config",
    "validate_schedule",
    "validate_sampler_config",
    "validate_model_config",
    "validate_trainer_config",
    "validate_output_root",
    "validate_checkpoint_path",
    "writable_folder",
]


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _number(cfg: DictConfig, key: str, *args: Any, **kwargs: Any) -> Any:
    """``cfg.<key>`` checked by :func:`_check_number`."""
    return _check_number(_get(cfg, key), key, *args, **kwargs)


def _check_number(value: Any, key: str, kind: type = float, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False, optional: bool = False) -> Any:
    """``value`` (setting ``key``) checked to be a ``kind`` (int or float) within [low, high] (open ends where asked)."""
    if value is None and optional:
        return None
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok_type = ok_type and float(value) == int(value)
    if not ok_type:
        raise ConfigError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}: set {key}=<number>")
    value = kind(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if low is not None and high is not None:
            allowed = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            allowed = f"{'>' if low_open else '>='} {low}"
        else:
            allowed = f"{'<' if high_open else '<='} {high}"
        raise ConfigError(f"{key} must be {allowed}, got {value}")
    return value


def _build(what: str, node: DictConfig, **kwargs: Any) -> Any:
    """``instantiate`` with constructor errors turned into a ConfigError naming the config group."""
    try:
        return instantiate(node, **kwargs)
    except Exception as e:  # hydra wraps constructor errors in InstantiationException; keep the cause's text
        cause = e.__cause__ or e
        raise ConfigError(f"{what}: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}") from e


def validate_schedule(cfg: DictConfig) -> torch.Tensor:
    """T ≥ 1, 0 < beta_start < beta_end < 1 where the schedule has them, and every β_t in (0, 1]; returns β."""
    timesteps = _number(cfg, "schedule.timesteps", int, low=1)
    start = _number(cfg, "schedule.beta_start", float, 0, 1, low_open=True, high_open=True, optional=True)
    end = _number(cfg, "schedule.beta_end", float, 0, 1, low_open=True, high_open=True, optional=True)
    if start is not None and end is not None and end <= start:
        raise ConfigError(f"schedule.beta_end={end} must be larger than schedule.beta_start={start}: β must increase")
    betas = _build("schedule", cfg.schedule, warn=False)
    if betas.numel() != timesteps or not torch.isfinite(betas).all() or (betas <= 0).any() or (betas > 1).any():
        raise ConfigError(f"schedule {cfg.schedule.get('name')} gives β outside (0, 1] for T={timesteps}: change its parameters")
    return betas


def validate_sampler_config(node: DictConfig, num_timesteps: int, key: str = "sampler") -> None:
    """A sampler config that builds (known options, DDIM η in [0, 1], ...) and whose steps fit in [1, T]."""
    _check_number(node.get("steps"), f"{key}.steps", int, low=1, high=num_timesteps, optional=True)
    if "eta" in node:
        _check_number(node.eta, f"{key}.eta", float, 0, 1)
    sampler = _build(key, node)
    try:
        sampler.timesteps(num_timesteps)
    except ValueError as e:
        raise ConfigError(f"{key}: {e} (schedule.timesteps={num_timesteps})") from e


def validate_model_config(cfg: DictConfig) -> None:
    """The network builds for the dataset's images and channels (on the meta device: no memory, no time)."""
    channels = _number(cfg, "dataset.channels", int, low=1)
    size = _number(cfg, "dataset.image_size", int, low=1)
    for key, want, name in (("model.in_channels", channels, "dataset.channels"), ("model.out_channels", channels, "dataset.channels"),
                            ("model.image_size", size, "dataset.image_size")):
        value = _get(cfg, key)
        if value is not None and value != want:
            raise ConfigError(f"{key}={value} disagrees with {name}={want}: set {key}=${{{name}}} or change {name}")
    with torch.device("meta"):
        _build("model", cfg.model)


def _literal_values(annotation: Any) -> list[Any]:
    """The values of a (union of) ``Literal`` type(s), e.g. Lightning's accepted precisions."""
    args = typing.get_args(annotation)
    return [v for a in args for v in _literal_values(a)] if typing.get_origin(annotation) is not typing.Literal else list(args)


def validate_trainer_config(cfg: DictConfig) -> None:
    """A precision and accelerator Lightning knows, and no more devices than this machine has."""
    from lightning_fabric.connector import _PRECISION_INPUT
    from pytorch_lightning.accelerators import AcceleratorRegistry

    precisions = [str(p) for p in _literal_values(_PRECISION_INPUT)]
    precision = str(_get(cfg, "trainer.precision"))
    if precision not in precisions:
        raise ConfigError(f"trainer.precision={precision} is unknown: use one of {', '.join(precisions)}")
    accelerators = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
    accelerator = str(_get(cfg, "trainer.accelerator") or "auto")
    if accelerator not in accelerators:
        raise ConfigError(f"trainer.accelerator={accelerator} is unknown: use one of {', '.join(accelerators)}")
    _number(cfg, "trainer.max_steps", int, low=-1)
    devices = _get(cfg, "trainer.devices")
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    available = torch.cuda.device_count() if gpu else (os.cpu_count() or 1)
    kind = "GPUs" if gpu else "CPU cores (Lightning starts one process per CPU device)"
    if gpu and available == 0:
        raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no GPU: use trainer=cpu")
    if devices in (None, "auto", -1, "-1"):
        return
    if isinstance(devices, str):
        wanted = len([d for d in devices.split(",") if d.strip()]) if "," in devices else (int(devices) if devices.isdigit() else None)
    elif isinstance(devices, int) and not isinstance(devices, bool):
        wanted = devices
    else:
        wanted = len(devices) if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)) else None
    if wanted is None or wanted < 1:
        raise ConfigError(f"trainer.devices must be a positive number, a list of device ids, -1 or auto, got {devices!r}")
    if wanted > available:
        raise ConfigError(f"trainer.devices={devices} but this machine has {available} {kind}: use trainer.devices<={available} or -1")


def writable_folder(path: str | os.PathLike) -> Path:
    """Raise ConfigError unless ``path`` is, or can be created as, a folder this process may write into.

    Returns its nearest ancestor that exists now (what a later clean-up must not remove).
    """
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create the output folder {path}: {existing} is a file, not a folder; choose another paths.output_root")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder {existing} is not writable: choose another paths.output_root or fix its permissions")
    return existing


def validate_output_root(cfg: DictConfig) -> None:
    root = _get(cfg, "paths.output_root")
    if root:
        writable_folder(root)


def validate_checkpoint_path(path: str | os.PathLike, key: str = "ckpt") -> Path:
    """A checkpoint path that names an existing, non-empty file (its contents are checked when it is read)."""
    from ddpm_lab.checkpoint import CheckpointError

    file = Path(str(path)).expanduser()
    if file.is_dir():
        raise CheckpointError(f"{key}={path} is a folder: pass a file, e.g. {key}={file / 'checkpoints' / 'last.ckpt'}")
    if not file.is_file():
        raise CheckpointError(f"{key}={path} does not exist: pass {key}=<run>/checkpoints/last.ckpt")
    if file.stat().st_size == 0:
        raise CheckpointError(f"{key}={path} is empty (0 bytes): the save was interrupted; use an earlier checkpoint")
    return file


def _validate_continued_checkpoint(cfg: DictConfig) -> None:
    """``ckpt_path=``: one of ours, trained with the model this config builds (else its weights cannot load)."""
    from ddpm_lab.checkpoint import CHECKPOINT_KEY, read_checkpoint

    path = validate_checkpoint_path(cfg.ckpt_path, "ckpt_path")
    stored = read_checkpoint(path, mmap=True)[CHECKPOINT_KEY]["config"].get("model")
    current = OmegaConf.to_container(cfg.model, resolve=True)
    if stored != current:
        diff = sorted(k for k in set(stored or {}) | set(current) if (stored or {}).get(k) != current.get(k))
        raise ConfigError(f"ckpt_path={path} was trained with a different model (model.{', model.'.join(diff)} differ): "
                          "use the model options it was trained with, or start a new run without ckpt_path")


def validate_train_config(cfg: DictConfig) -> None:
    """Every check a training run needs before it reads data or writes a file; raises ConfigError on the first problem."""
    betas = validate_schedule(cfg)
    _build("diffusion", cfg.diffusion, betas=betas)
    validate_sampler_config(cfg.sampler, len(betas))
    grid_sampler = _get(cfg, "callbacks.sample_grid.sampler")
    if grid_sampler is not None:
        validate_sampler_config(grid_sampler, len(betas), "callbacks.sample_grid.sampler")
    _number(cfg, "dataset.batch_size", int, low=1)
    validate_model_config(cfg)
    _number(cfg, "optimizer.lr", float, low=0, low_open=True)
    _number(cfg, "warmup_steps", int, low=0)
    validate_trainer_config(cfg)
    validate_output_root(cfg)
    if cfg.get("ckpt_path") and not cfg.get("resume"):
        _validate_continued_checkpoint(cfg)
