"""A trained model loaded back from a checkpoint: which weights (EMA or raw), checked against the network its stored
config builds (sized on the meta device first), refused when non-finite; and its classes, by name or index.
Plain PyTorch: a notebook can ``load_model`` and sample without Lightning or Hydra."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm_lab.artifacts.allow_list import build_model, build_stored
from ddpm_lab.artifacts.checkpoint import checkpoint_config, read_checkpoint
from ddpm_lab.artifacts.classes import resolve_class
from ddpm_lab.diffusion import DiffusionProcess, Sampler
from ddpm_lab.diffusion.guidance import num_classes_of
from ddpm_lab.errors import CheckpointError, UnsafeConfigError, check_choice, first_line

WEIGHTS = ("auto", "ema", "raw")


@dataclass
class LoadedModel:
    """A trained model rebuilt from a checkpoint: ``net`` (in eval mode), ``diffusion``, its default ``sampler``.

    Unpacks as ``net, diffusion, sampler = load_model(path)``; ``config``, ``global_step`` and ``path`` say where
    it came from. ``num_classes`` (0: unconditional) and ``class_names`` describe a class-conditional model;
    :meth:`class_index` turns ``7`` or ``"seven"`` into a label.
    """

    net: nn.Module
    diffusion: DiffusionProcess
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
        """The label of class ``value``, given by name (``"cat"``) or index (``7``); see
        :func:`~ddpm_lab.artifacts.classes.resolve_class` for which wins."""
        return resolve_class(value, self.num_classes, self.class_names, key, self.path)


def stored_class_names(config: dict[str, Any], num_classes: int) -> list[str] | None:
    """The class names a stored config holds, when they are a list of ``num_classes`` strings."""
    dataset = config.get("dataset")
    names = dataset.get("class_names") if isinstance(dataset, dict) else None
    if not num_classes or not isinstance(names, list) or len(names) != num_classes:
        return None
    return [str(name) for name in names]


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
    return LoadedModel(net, diffusion.to(device), sampler, config, ckpt.get("global_step") or 0, Path(path))
