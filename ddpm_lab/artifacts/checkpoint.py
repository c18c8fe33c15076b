"""The checkpoint format, in one place: what a checkpoint holds and writing it, reading it safely (and upgrading
older formats), checking that it fits a model, finding a run's newest one, and loading a trained model back
(plain PyTorch: no Lightning, no Hydra).

A ddpm_lab checkpoint is a Lightning checkpoint (``state_dict`` with ``net.*`` weights, ``global_step``,
optimizer and callback states) plus ``checkpoint["ddpm_lab"] = {"format": 2, "config": {...}}``
(:func:`write_entry`). The config (:func:`make_stored_config`) holds the resolved ``model``, ``schedule``,
``diffusion`` and ``sampler`` sections (enough to rebuild the model without the run's config files), the dataset's
name, size and channels (and class names, for a class-conditional run; the model's ``num_classes`` is in
``config["model"]``), and the run's config and group choices for display. With EMA on, ``state_dict`` holds the
averaged weights and ``current_model_state`` the raw ones. A checkpoint of imported weights
(:func:`weights_checkpoint`) has the same entry and no optimizer or loop state.

:func:`read_checkpoint` is the one reader: a format newer than :data:`CHECKPOINT_FORMAT` is refused, an older one
is upgraded by :data:`MIGRATIONS`, one step per format, so every caller sees today's layout and target names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm_lab.artifacts.allow_list import SECTIONS, build_model, build_stored
from ddpm_lab.diffusion import GaussianDiffusion, Sampler
from ddpm_lab.diffusion.guidance import num_classes_of
from ddpm_lab.errors import (
    CheckpointError,
    ConfigError,
    NewerCheckpointError,
    UnsafeConfigError,
    check_choice,
    first_line,
)

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "ddpm_lab"
# Bumped when what a checkpoint stores changes shape, with a migration from the previous format in MIGRATIONS.
CHECKPOINT_FORMAT = 2
WEIGHTS = ("auto", "ema", "raw")
# The targets that checkpoints of ddpm_lab 0.1 (the flat package) name, and today's names for them.
LEGACY_TARGETS = {
    "ddpm_lab.unet.UNet": "ddpm_lab.models.UNet",
    "ddpm_lab.schedules.make_betas": "ddpm_lab.diffusion.make_betas",
    "ddpm_lab.samplers.DDPMSampler": "ddpm_lab.diffusion.DDPMSampler",
    "ddpm_lab.samplers.DDIMSampler": "ddpm_lab.diffusion.DDIMSampler",
    "ddpm_lab.samplers.DPMSolverSampler": "ddpm_lab.diffusion.DPMSolverSampler",
}


@dataclass
class LoadedModel:
    """A trained model rebuilt from a checkpoint: ``net`` (in eval mode), ``diffusion``, its default ``sampler``.

    Unpacks as ``net, diffusion, sampler = load_model(path)``; ``config``, ``global_step`` and ``path`` say where
    it came from. ``num_classes`` (0: unconditional) and ``class_names`` describe a class-conditional model;
    :meth:`class_index` turns ``7`` or ``"seven"`` into a label.
    """

    net: nn.Module
    diffusion: GaussianDiffusion
    sampler: Sampler
    config: dict[str, Any]
    global_step: int
    path: Path

    def __iter__(self) -> Iterator[Any]:
        return iter((self.net, self.diffusion, self.sampler))

    @property
    def num_classes(self) -> int:
        """The classes the network is conditioned on; 0 for an unconditional model."""
        return num_classes_of(self.net)

    @property
    def class_names(self) -> list[str] | None:
        """The dataset's class names, index by index (None: unconditional, or not stored)."""
        return stored_class_names(self.config, self.num_classes)

    @property
    def class_titles(self) -> list[str]:
        """What to call each class: its stored name, else its index as text (empty for an unconditional model)."""
        return self.class_names or [str(k) for k in range(self.num_classes)]

    def class_index(self, value: int | str, key: str = "class") -> int:
        """The label of class ``value``, given as an index (``7``) or a name (``"cat"``); see :func:`resolve_class`."""
        return resolve_class(value, self.num_classes, self.class_names, key, self.path)


def stored_class_names(config: dict[str, Any], num_classes: int) -> list[str] | None:
    """The class names a stored config holds, when they are a list of ``num_classes`` strings."""
    dataset = config.get("dataset")
    names = dataset.get("class_names") if isinstance(dataset, dict) else None
    if not num_classes or not isinstance(names, list) or len(names) != num_classes:
        return None
    return [str(name) for name in names]


def resolve_class(
    value: int | str,
    num_classes: int,
    class_names: list[str] | None,
    key: str = "class",
    path: str | os.PathLike = "this checkpoint",
) -> int:
    """The label ``value`` names: a class name (exact match first), else an index in ``[0, num_classes)``.

    Raises :class:`~ddpm_lab.errors.ConfigError` (one line, the valid choices) for an unconditional model, an
    unknown name or an index out of range.
    """
    if not num_classes:
        raise ConfigError(
            f"{key}={value} needs a class-conditional model, but {path} is unconditional: "
            "train one with conditioning=class, or leave out class/per_class/guidance"
        )
    names = class_names or []
    if isinstance(value, str) and value in names:
        return names.index(value)
    text = str(value).strip()
    if not isinstance(value, bool) and (isinstance(value, int) or text.lstrip("-").isdigit()):
        index = int(text)
        if 0 <= index < num_classes:
            return index
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    raise ConfigError(
        f"{key}={value} is not one of the model's {num_classes} classes: use an index 0..{num_classes - 1}"
        + (f" or a name ({shown})" if names else "")
    )


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
    only, never arbitrary objects) and upgraded (:func:`upgraded_entry`). Every reader goes through here.

    ``mmap=True`` maps the tensors instead of reading them (a cheap look at a large checkpoint).
    """
    ckpt = _load(path, mmap)
    entry = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(entry, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is not a ddpm_lab checkpoint (no '{CHECKPOINT_KEY}' entry): train one with ddpm_lab.train"
        )
    ckpt[CHECKPOINT_KEY] = upgraded_entry(entry, path)
    return ckpt


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
    step = read_checkpoint(path, mmap=True).get("global_step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path} has no valid global_step ({step!r})")
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


def net_weights(
    ckpt: dict[str, Any], weights: str = "auto", path: str | os.PathLike = "checkpoint"
) -> dict[str, torch.Tensor]:
    """The network's weights (``net.`` prefix removed): ``auto`` (EMA when present), ``ema`` or ``raw``."""
    check_choice(weights, "weights", WEIGHTS)
    raw_state = ckpt.get("current_model_state")
    has_ema = isinstance(raw_state, dict)
    if weights == "ema" and not has_ema:
        raise CheckpointError(f"{path} holds no EMA weights: use weights=raw or train with EMA on (callbacks.ema)")
    state = raw_state if (weights == "raw" and has_ema) else ckpt["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: its state_dict is a {type(state).__name__}, not a mapping of tensors")
    return {k[len("net.") :]: v for k, v in state.items() if isinstance(k, str) and k.startswith("net.")}


def check_fits(net: nn.Module, state: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse weights whose names or shapes differ from ``net`` (which may live on the meta device)."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(
        k
        for k in set(expected) & set(state)
        if not isinstance(state[k], torch.Tensor) or expected[k].shape != state[k].shape
    )
    if missing or unexpected or reshaped:
        example = (reshaped or missing or unexpected)[0]
        raise CheckpointError(
            f"weights in {path} do not fit the model its config builds ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, "
            f"{len(reshaped)} of another shape, e.g. net.{example}): the file was edited or mixes two model configs"
        )


def refuse_non_finite(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse weights holding NaN or ±inf (a diverged run): they would sample black or noise, silently."""
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{path}: weight net.{name} holds {bad} non-finite value(s) (NaN or inf), the first bad tensor: "
                "the run diverged before this checkpoint; use an earlier checkpoint of the run"
            )


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu", weights: str = "auto") -> LoadedModel:
    """Rebuild net, diffusion and sampler from a ddpm_lab checkpoint alone (EMA weights when present).

    ``weights``: ``auto`` (EMA when the checkpoint has them), ``ema`` or ``raw``. The stored config is checked
    against the allow-list and the network is sized on the meta device against the stored tensors before
    anything is allocated, so a small hostile file cannot make us build a huge model.
    """
    check_choice(weights, "weights", WEIGHTS)
    ckpt = read_checkpoint(path)
    config = checkpoint_config(ckpt, path)
    state = net_weights(ckpt, weights, path)
    try:
        with torch.device("meta"):
            check_fits(build_model(config), state, path)
        net, diffusion, sampler = build_stored(config)
    except UnsafeConfigError as e:
        raise CheckpointError(f"refusing the config stored in {path}: {e}") from e
    except CheckpointError:
        raise
    except Exception as e:  # a value the constructors refuse, or a type they choke on: the file was edited
        raise CheckpointError(f"cannot rebuild the model stored in {path}: {first_line(e)}") from e
    refuse_non_finite(state, path)
    net.load_state_dict(state)
    net.to(device).eval()
    return LoadedModel(net, diffusion.to(device), sampler, config, int(ckpt.get("global_step", 0)), Path(path))
