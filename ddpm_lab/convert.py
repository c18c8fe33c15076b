"""Interop with diffusers: ``python -m ddpm_lab.convert from_diffusers=DIR out=FILE.ckpt`` or
``python -m ddpm_lab.convert ckpt=FILE.ckpt to_diffusers=DIR``.

``convert(cfg)`` does the work (see :mod:`ddpm_lab.artifacts.diffusers_io`); ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from ddpm_lab.artifacts.allow_list import build_stored
from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.artifacts.checkpoint import WEIGHTS, checkpoint_file, load_model, make_stored_config, weights_checkpoint
from ddpm_lab.artifacts.diffusers_io import read_diffusers, require_diffusers, write_diffusers
from ddpm_lab.config import config_dir
from ddpm_lab.config.entry import entry_point
from ddpm_lab.errors import ConfigError, OutputExistsError, check_choice, check_number, user_errors

log = logging.getLogger(__name__)

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
    """Everything ``convert`` reads from its config, parsed once by :func:`check`."""

    direction: str  # import (diffusers -> ddpm_lab) | export (ddpm_lab -> diffusers)
    source: str  # from_diffusers= folder | ckpt= file
    target: str  # out= file | to_diffusers= folder
    weights: str  # export: auto | ema | raw
    fid: float | None  # export: an FID for the model card


def check(cfg: DictConfig) -> ConvertSettings:
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


def import_diffusers(folder: str, out: str) -> Path:
    """Write the ddpm_lab checkpoint of a diffusers DDPM folder to ``out`` (which must not exist)."""
    path = Path(out).expanduser()
    if path.exists():
        raise OutputExistsError(f"out={out} already exists: pass a new file name (nothing is overwritten)")
    sections, state = read_diffusers(folder)
    model = sections["model"]
    config = make_stored_config(
        sections,
        dataset_name=None,
        image_size=model["image_size"],
        channels=model["in_channels"],
        run_config={"converted_from": str(Path(folder).expanduser().resolve())},
    )
    net, _, _ = build_stored(config)  # what sample, evaluate and train will build: refused before writing
    net.load_state_dict(state)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(weights_checkpoint(config, state), f)
    return path


def export_diffusers(ckpt: str, folder: str, weights: str = "auto", fid: float | None = None) -> Path:
    """Write a ``DDPMPipeline`` folder of a ddpm_lab checkpoint (EMA weights by default)."""
    checkpoint_file(ckpt)
    model = load_model(ckpt, weights=weights)
    return write_diffusers(folder, model.config, model.net.state_dict(), model.global_step, fid)


def convert(cfg: DictConfig) -> Path:
    """Check ``cfg`` and convert in the direction it names; returns what was written."""
    s = check(cfg)
    if s.direction == "import":
        return import_diffusers(s.source, s.target)
    return export_diffusers(s.source, s.target, s.weights, s.fid)


@entry_point("convert")  # a mistyped key: one line, exit status 2
@hydra.main(config_path=config_dir(), config_name="convert", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():  # one line on stderr, exit status 2
        path = convert(cfg)
    print(path)


if __name__ == "__main__":
    main()
