"""Interop with diffusers: ``python -m ddpm_lab.convert from_diffusers=DIR out=FILE.ckpt`` (``DIR``: a folder, or a
Hugging Face Hub id such as ``google/ddpm-cifar10-32``) or ``python -m ddpm_lab.convert ckpt=FILE.ckpt
to_diffusers=DIR``.

``convert(cfg)`` does the work (see :mod:`ddpm_lab.artifacts.diffusers_io`); ``main`` is only the Hydra wrapper.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from ddpm_lab.artifacts.allow_list import build_stored
from ddpm_lab.artifacts.atomic import atomic_write
from ddpm_lab.artifacts.checkpoint import checkpoint_file, make_stored_config, weights_checkpoint
from ddpm_lab.artifacts.diffusers_io import read_diffusers, write_diffusers
from ddpm_lab.artifacts.hub import resolve_diffusers
from ddpm_lab.artifacts.trained_model import load_model
from ddpm_lab.config import config_dir
from ddpm_lab.config.entry import entry_point
from ddpm_lab.config.settings import convert_settings
from ddpm_lab.errors import OutputExistsError, user_errors

log = logging.getLogger(__name__)


def import_diffusers(folder: str, out: str, revision: str | None = None) -> Path:
    """Write the ddpm_lab checkpoint of a diffusers DDPM folder (or Hub id) to ``out`` (which must not exist,
    checked before any work and again, atomically, when the complete file takes the name)."""
    path = Path(out).expanduser()
    if path.exists():
        raise OutputExistsError(f"out={out} already exists: pass a new file name (nothing is overwritten)")
    source = resolve_diffusers(folder, revision)  # a Hub id: fetched into the Hub's cache, then read as a folder
    sections, state = read_diffusers(source.folder)
    model = sections["model"]
    config = make_stored_config(
        sections,
        dataset_name=None,
        image_size=model["image_size"],
        channels=model["in_channels"],
        run_config={"converted_from": source.origin},
    )
    net, _, _ = build_stored(config)  # what sample, evaluate and train will build: refused before writing
    net.load_state_dict(state)
    with atomic_write(path, new=True) as tmp, open(tmp, "wb") as f:  # never over a file made meanwhile
        torch.save(weights_checkpoint(config, state), f)
    return path


def export_diffusers(ckpt: str, folder: str, weights: str = "auto", fid: float | None = None) -> Path:
    """Write a ``DDPMPipeline`` folder of a ddpm_lab checkpoint (EMA weights by default)."""
    checkpoint_file(ckpt)
    model = load_model(ckpt, weights=weights)
    return write_diffusers(folder, model.config, model.net.state_dict(), model.global_step, fid)


def convert(cfg: DictConfig) -> Path:
    """Check ``cfg`` and convert in the direction it names; returns what was written."""
    s = convert_settings(cfg)
    if s.direction == "import":
        return import_diffusers(s.source, s.target, s.revision)
    return export_diffusers(s.source, s.target, s.weights, s.fid)


@entry_point("convert")  # a mistyped key: one line, exit status 2
@hydra.main(config_path=config_dir(), config_name="convert", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():  # one line on stderr, exit status 2
        path = convert(cfg)
    print(path)


if __name__ == "__main__":
    main()
