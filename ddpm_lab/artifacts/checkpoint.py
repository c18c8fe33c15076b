"""The checkpoint format, in one place: what a checkpoint holds and writing it, reading it safely (and upgrading
older formats), and finding a run's newest one (plain PyTorch: no Lightning, no Hydra). Loading a trained model
back from one is :mod:`ddpm_lab.artifacts.trained_model`.

A ddpm_lab checkpoint is a Lightning checkpoint (``state_dict`` with ``net.*`` weights, ``global_step``,
optimizer and callback states) plus ``checkpoint["ddpm_lab"] = {"format": 2, "config": {...}}``
(:func:`write_entry`). The config (:func:`make_stored_config`) holds the resolved ``model``, ``schedule``,
``diffusion`` and ``sampler`` sections (enough to rebuild the model without the run's config files), the dataset's
name, size and channels (and class names, for a class-conditional run; the model's ``num_classes`` is in
``config["model"]``), and the run's config and group choices for display. With EMA on, ``state_dict`` holds the
averaged weights and ``current_model_state`` the raw ones. A checkpoint of imported weights
(:func:`weights_checkpoint`) has the same entry and no optimizer or loop state; so does one of post-hoc EMA weights
(:func:`averaged_checkpoint`), with the raw weights beside them and where they came from under ``posthoc_ema``.

:func:`read_checkpoint` is the one reader: a format newer than :data:`CHECKPOINT_FORMAT` is refused, an older one
is upgraded by :data:`MIGRATIONS`, one step per format, so every caller sees today's layout and target names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from ddpm_lab.artifacts.allow_list import SECTIONS
from ddpm_lab.errors import (
    CheckpointError,
    NewerCheckpointError,
    first_line,
)

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "ddpm_lab"
POSTHOC_KEY = "posthoc_ema"  # a post-hoc EMA checkpoint's provenance (averaged_checkpoint)
# Bumped when what a checkpoint stores changes shape, with a migration from the previous format in MIGRATIONS.
CHECKPOINT_FORMAT = 2
# The targets that checkpoints of ddpm_lab 0.1 (the flat package) name, and today's names for them.
LEGACY_TARGETS = {
    "ddpm_lab.unet.UNet": "ddpm_lab.models.UNet",
    "ddpm_lab.schedules.make_betas": "ddpm_lab.diffusion.make_betas",
    "ddpm_lab.samplers.DDPMSampler": "ddpm_lab.diffusion.DDPMSampler",
    "ddpm_lab.samplers.DDIMSampler": "ddpm_lab.diffusion.DDIMSampler",
    "ddpm_lab.samplers.DPMSolverSampler": "ddpm_lab.diffusion.DPMSolverSampler",
}


def checkpoint_file(path: str | os.PathLike, key: str = "ckpt") -> Path:
    """``path`` when it names an existing, non-empty file (its contents are checked when it is read)."""
    file = Path(str(path)).expanduser()
    if file.is_dir():
        raise CheckpointError(f"{key}={path} is a folder: pass a file, e.g. {key}={file / 'checkpoints' / 'last.ckpt'}")
    if not file.is_file():
        raise CheckpointError(f"{key}={path} does not exist: pass {key}=<run>/checkpoints/last.ckpt")
    if file.stat().st_size == 0:
        raise CheckpointError(f"{key}={path} is empty (0 bytes): the save was interrupted; use an earlier checkpoint")
    return file


def _unreadable(path: Path, error: Exception) -> str:
    """Why ``path`` cannot be read, without torch's advice to load it with ``weights_only=False`` (that would
    run whatever code the file carries)."""
    text = str(error)
    if "weights_only" not in text and "Weights only" not in text:
        return (
            f"cannot read checkpoint {path} safely (truncated, corrupt or not a torch checkpoint): "
            f"{first_line(error, 300)}"
        )
    # torch's message: a header advising weights_only=False, then the real reason on a later line
    detail = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    reasons = [line for line in lines if "nsupported" in line]
    reasons += [line for line in lines if not any(w in line.lower() for w in ("weights_only", "weights only", "docum"))]
    reason = reasons[0] if reasons else "objects other than tensors"
    return (
        f"cannot read checkpoint {path} safely: it holds more than tensors and plain containers ({reason[:200]}), "
        "and loading such a file can run code, so it is refused; use a checkpoint written by ddpm_lab.train "
        "(or one whose author you trust to re-save it as plain tensors)"
    )


def _load(path: str | os.PathLike, mmap: bool) -> dict[str, Any]:
    """Any torch checkpoint as a dict of tensors and plain containers (``weights_only``: no code runs)."""
    path = checkpoint_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, foreign pickle, code-carrying pickle refused by weights_only
        raise CheckpointError(_unreadable(path, e)) from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint")
    return ckpt


def _today_targets(entry: dict[str, Any]) -> dict[str, Any]:
    """Format 1 -> 2: the stored sections name today's targets (``ddpm_lab.unet.UNet`` -> ``ddpm_lab.models.UNet``)."""
    config = entry.get("config")
    if not isinstance(config, dict):
        return entry  # refused by checkpoint_config, with its own message
    renamed = {}
    for key, section in config.items():
        target = section.get("_target_") if isinstance(section, dict) else None
        if isinstance(target, str) and target in LEGACY_TARGETS:
            section = {**section, "_target_": LEGACY_TARGETS[target]}
        renamed[key] = section
    return {**entry, "config": renamed}


# Format N -> the entry of format N + 1; read_checkpoint applies them in turn up to CHECKPOINT_FORMAT.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _today_targets}


def upgraded_entry(entry: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's ``ddpm_lab`` entry in today's format: older formats migrated one step at a time, a newer
    one (or a format number that is not one) refused in one line."""
    number = entry.get("format")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise CheckpointError(
            f"{path} has no valid checkpoint format number ({number!r:.40}): it is damaged or was not written by "
            "ddpm_lab; use another checkpoint of the run"
        )
    if number > CHECKPOINT_FORMAT:
        raise NewerCheckpointError(
            f"{path} was written by a newer ddpm_lab (checkpoint format {number}; this version reads up to "
            f"{CHECKPOINT_FORMAT}): upgrade ddpm_lab to read it"
        )
    for step in range(number, CHECKPOINT_FORMAT):
        entry = {**MIGRATIONS[step](entry), "format": step + 1}
    return entry


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """A ddpm_lab checkpoint in today's format, read with ``weights_only=True`` (tensors and plain containers
    only, never arbitrary objects), upgraded (:func:`upgraded_entry`) and its fields checked (:func:`check_fields`).
    Every reader goes through here.

    ``mmap=True`` maps the tensors instead of reading them (a cheap look at a large checkpoint).
    """
    ckpt = _load(path, mmap)
    entry = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(entry, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is not a ddpm_lab checkpoint (no '{CHECKPOINT_KEY}' entry): train one with ddpm_lab.train"
        )
    ckpt[CHECKPOINT_KEY] = upgraded_entry(entry, path)
    check_fields(ckpt, path)
    return ckpt


# The type of each top-level field a checkpoint may hold (Lightning's and ours); a field may be absent.
FIELD_TYPES: dict[str, type] = {
    "epoch": int,
    "global_step": int,
    "state_dict": dict,
    "current_model_state": dict,
    "optimizer_states": list,
    "lr_schedulers": list,
    "callbacks": dict,
    "loops": dict,
}
# Class names come from folder names (at most 255 bytes); ImageNet-21k has 21,841 classes.
MAX_CLASSES = 100_000
MAX_CLASS_NAME = 200


def check_fields(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse, naming the field, a checkpoint whose fields have the wrong type (a ``global_step`` that is no
    integer, a ``state_dict`` that is no mapping) or absurd sizes (more than :data:`MAX_CLASSES` class names, or a
    name longer than :data:`MAX_CLASS_NAME` characters): an edited or hostile file, caught before anything uses it."""
    for key, kind in FIELD_TYPES.items():
        value = ckpt.get(key)
        if value is None:
            continue
        wrong = not isinstance(value, kind) or isinstance(value, bool)
        if wrong or (kind is int and value < 0):
            what = "a non-negative integer" if kind is int else f"a {kind.__name__}"
            raise CheckpointError(f"{path}: its {key} must be {what}, got {_shown(value)}: the file was edited")
    config = ckpt[CHECKPOINT_KEY].get("config")
    dataset = config.get("dataset") if isinstance(config, dict) else None
    if dataset is None:
        return
    if not isinstance(dataset, dict):
        raise CheckpointError(f"{path}: its stored dataset section is a {type(dataset).__name__}, not a mapping")
    for key in ("image_size", "channels"):
        value = dataset.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CheckpointError(f"{path}: its stored dataset.{key} must be a positive integer, got {_shown(value)}")
    names = dataset.get("class_names")
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise CheckpointError(f"{path}: its stored class_names must be a list of names, got {_shown(names)}")
    if len(names) > MAX_CLASSES:
        raise CheckpointError(f"{path} stores {len(names)} class names, over the {MAX_CLASSES} a dataset can have")
    long = next((i for i, name in enumerate(names) if len(name) > MAX_CLASS_NAME), None)
    if long is not None:
        raise CheckpointError(
            f"{path}: its class name {long} is {len(names[long])} characters long, over the {MAX_CLASS_NAME} a "
            "class (folder) name can be"
        )


def _shown(value: Any) -> str:
    """A value of an untrusted field, short enough for one line."""
    text = repr(value) if not isinstance(value, torch.Tensor) else f"a tensor of shape {tuple(value.shape)}"
    return text if len(text) <= 40 else text[:37] + "..."


def make_stored_config(
    sections: dict[str, Any],
    dataset_name: str | None,
    image_size: int,
    channels: int,
    class_names: list[str] | None = None,
    run_config: dict[str, Any] | None = None,
    choices: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The config a checkpoint stores: the model sections (``model``, ``schedule``, ``diffusion``, ``sampler``),
    the dataset's name, size and channels (and class names, when conditioned on them), and the run's config and
    group choices (for display only: nothing is built from them)."""
    config: dict[str, Any] = {key: sections[key] for key in SECTIONS}
    config["dataset"] = {"name": dataset_name, "image_size": int(image_size), "channels": int(channels)}
    if class_names:
        config["dataset"]["class_names"] = [str(name) for name in class_names]
    config["run"] = {"config": run_config or {}, "choices": choices or {}}
    return config


def write_entry(checkpoint: dict[str, Any], config: dict[str, Any]) -> None:
    """Add what makes a Lightning checkpoint a ddpm_lab one: the format number and the stored config."""
    checkpoint[CHECKPOINT_KEY] = {"format": CHECKPOINT_FORMAT, "config": config}


def lightning_version() -> str:
    """The installed Lightning's version, recorded in checkpoints as Lightning does (without importing it)."""
    try:
        return version("pytorch-lightning")
    except PackageNotFoundError:
        return "2.4.0"


def weights_checkpoint(config: dict[str, Any], weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A new checkpoint of ``net`` weights alone (e.g. imported ones): step 0, no optimizer or loop state, so
    ``ckpt_path=`` fine-tunes it from a fresh optimizer and ``resume=`` refuses it (:func:`is_training_checkpoint`)."""
    checkpoint = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": lightning_version(),
        "state_dict": {f"net.{k}": v for k, v in weights.items()},
        "optimizer_states": [],
        "lr_schedulers": [],
    }
    write_entry(checkpoint, config)
    return checkpoint


def averaged_checkpoint(
    config: dict[str, Any],
    averaged: dict[str, torch.Tensor],
    raw: dict[str, torch.Tensor],
    global_step: int,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """A new checkpoint of averaged ``net`` weights computed after training (post-hoc EMA): the average in
    ``state_dict`` and the raw weights in ``current_model_state``, as a training checkpoint with EMA on holds them
    (so ``weights=auto|ema|raw`` mean what they mean there), ``provenance`` under ``posthoc_ema``; no optimizer or
    loop state (``resume=`` refuses it, ``ckpt_path=`` fine-tunes from it like an imported one)."""
    checkpoint = weights_checkpoint(config, averaged)
    checkpoint["global_step"] = int(global_step)
    checkpoint["current_model_state"] = {f"net.{k}": v for k, v in raw.items()}
    checkpoint[POSTHOC_KEY] = provenance
    return checkpoint


def is_training_checkpoint(ckpt: dict[str, Any]) -> bool:
    """Whether ``ckpt`` can continue a run: it holds the optimizer state and Lightning's loop state."""
    return isinstance(ckpt.get("optimizer_states"), list) and isinstance(ckpt.get("loops"), dict)


def checkpoint_config(ckpt: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The config a (read) checkpoint stores under ``ddpm_lab`` (unchecked: see ``allow_list.check_safe``)."""
    config = ckpt[CHECKPOINT_KEY].get("config")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path} stores no model config under '{CHECKPOINT_KEY}': it was not written by ddpm_lab.train"
        )
    return config


def checkpoint_step(path: str | os.PathLike) -> int:
    """The ``global_step`` stored in a checkpoint, read without loading its tensors into memory."""
    step = read_checkpoint(path, mmap=True).get("global_step")  # its type checked there
    if step is None:
        raise CheckpointError(f"{path} has no global_step")
    return step


def newest_checkpoint(folder: str | os.PathLike) -> Path:
    """The checkpoint to continue from: the readable one of ``folder`` with the highest training step
    (``last.ckpt`` on a tie).

    The step comes from inside each file, not from file times (a copied folder has new ones). Damaged files are
    skipped with a warning naming them; one written by a newer ddpm_lab stops the search (continuing from an older
    one would replace it).
    """
    folder = Path(folder)
    candidates = sorted(folder.glob("*.ckpt"))
    if not candidates:
        raise CheckpointError(f"no checkpoint in {folder} (the run stopped before its first one)")
    steps, damaged = {}, []
    for path in candidates:
        try:
            steps[path] = checkpoint_step(path)
        except NewerCheckpointError:
            raise
        except CheckpointError as e:  # truncated, empty or foreign: whatever it is, it cannot be continued
            damaged.append(path.name)
            log.warning("skipping checkpoint %s: %s", path, e)
    if not steps:
        raise CheckpointError(
            f"every checkpoint in {folder} is damaged ({', '.join(damaged)}): start a new run, "
            "or pass a good copy with ckpt_path="
        )
    newest = max(steps, key=lambda p: (steps[p], p.name == "last.ckpt"))
    if damaged:
        log.warning(
            "resuming from %s instead of the damaged %s (kept for inspection); it holds step %d",
            newest.name,
            ", ".join(damaged),
            steps[newest],
        )
    return newest
