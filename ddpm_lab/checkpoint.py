"""Loading trained models back from Lightning checkpoints, safely (no unpickling of code)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm_lab.diffusion import GaussianDiffusion
from ddpm_lab.errors import ConfigError, UserError
from ddpm_lab.samplers import Sampler
from ddpm_lab.validate import validate_checkpoint_path

CHECKPOINT_KEY = "ddpm_lab"
# Bumped when what a checkpoint stores changes shape.
CHECKPOINT_FORMAT = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable, or not one of ours; the message says which and why."""


@dataclass
class LoadedModel:
    net: nn.Module
    diffusion: GaussianDiffusion
    sampler: Sampler
    config: dict[str, Any]
    global_step: int
    path: Path


def pick_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible: use device=cpu or device=auto")
    return device


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never arbitrary objects.

    ``mmap=True`` maps the tensors instead of reading them (a cheap look at a large checkpoint).
    """
    path = validate_checkpoint_path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, foreign pickle, code-carrying pickle refused by weights_only
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path} safely (truncated, corrupt or not a torch checkpoint): "
                              f"{first[:300]}") from e
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a ddpm_lab checkpoint (no '{CHECKPOINT_KEY}' entry): train one with ddpm_lab.train")
    return ckpt


def _check_fits(net: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights whose names or shapes differ from the network the stored config builds."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        example = (reshaped or missing or unexpected)[0]
        raise CheckpointError(
            f"weights in {path} do not fit the model its config builds ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(reshaped)} of another shape, e.g. net.{example}): the file was edited or mixes two model configs"
        )


def load_model(path: str | Path, device: torch.device | str = "cpu", weights: str = "auto") -> LoadedModel:
    """Rebuild net, diffusion and sampler from a ddpm_lab checkpoint alone.

    ``weights``: ``auto`` (EMA weights when the checkpoint has them), ``ema`` or ``raw``.
    """
    from ddpm_lab.config import UnsafeConfigError, build_components

    if weights not in ("auto", "ema", "raw"):
        raise CheckpointError(f"weights must be auto, ema or raw, got {weights!r}")
    ckpt = read_checkpoint(path)
    config = ckpt[CHECKPOINT_KEY].get("config") if isinstance(ckpt[CHECKPOINT_KEY], dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} stores no model config under '{CHECKPOINT_KEY}': it was not written by ddpm_lab.train")
    try:
        net, diffusion, sampler = build_components(config, trusted=False)
    except UnsafeConfigError as e:
        raise CheckpointError(f"refusing the config stored in {path}: {e}") from e
    except Exception as e:
        raise CheckpointError(f"cannot rebuild the model stored in {path}: {str(e).splitlines()[0] if str(e) else e!r}") from e
    # With EMA on (ddpm_lab.ema.EMA, a Lightning WeightAveraging), state_dict holds the averaged weights and
    # current_model_state the raw ones; without EMA, state_dict holds the raw weights.
    raw_state = ckpt.get("current_model_state")
    has_ema = raw_state is not None
    if weights == "ema" and not has_ema:
        raise CheckpointError(f"{path} holds no EMA weights: use weights=raw or train with EMA on (callbacks.ema)")
    state = raw_state if (weights == "raw" and has_ema) else ckpt["state_dict"]
    net_state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    _check_fits(net, net_state, path)
    net.load_state_dict(net_state)
    net.to(device).eval()
    return LoadedModel(net, diffusion.to(device), sampler, config, int(ckpt.get("global_step", 0)), Path(path))
