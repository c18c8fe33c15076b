"""Hydra side: where the configs live, custom resolvers, and building objects from (trusted or stored) configs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.diffusion import GaussianDiffusion
from ddpm_lab.samplers import Sampler

# What a config read back from a checkpoint may instantiate: the project's own builders, nothing else.
SAFE_TARGET_PREFIXES = ("ddpm_lab.",)


def config_dir() -> str:
    """The ``configs/`` folder: next to the package in a checkout, inside it in an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs", here / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"ddpm_lab configs not found next to {here}: reinstall the package")


def run_name(override_dirname: str, max_len: int = 120) -> str:
    """A folder- and TensorBoard-friendly run name from Hydra's ``override_dirname``.

    Group choices (``schedule=cosine`` → ``schedule-cosine``) come first and dotted keys are shortened to their last
    part (``optimizer.lr=1e-3`` → ``lr-1e-3``), so what tells runs apart survives the length limit.
    """
    items = [i for i in override_dirname.split(",") if i]
    groups = [i for i in items if "." not in i.split("=", 1)[0]]
    values = [i.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + i.split("=", 1)[-1] if "=" in i else i for i in items if i not in groups]
    # '=' and ',' are Hydra override syntax: keep them out, so a run folder can be passed as a value unquoted.
    name = "_".join(i.replace("=", "-") for i in groups + values)
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", name.replace("/", "-")).strip("-._")
    return (name[:max_len] or "default").rstrip("-._")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    if not OmegaConf.has_resolver("floordiv"):  # e.g. attention at ${floordiv:${dataset.image_size},4}
        OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b))
    from ddpm_lab.resume import register_resolvers as register_resume_resolvers

    register_resume_resolvers()


register_resolvers()


def _check_safe(node: Any, where: str) -> None:
    """Refuse any ``_target_`` outside the allow-list anywhere in a stored config."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not (isinstance(target, str) and target.startswith(SAFE_TARGET_PREFIXES)):
            raise ValueError(f"{where}: refusing to build _target_={target!r} (only ddpm_lab.* is allowed)")
        for key, value in node.items():
            _check_safe(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _check_safe(value, f"{where}[{i}]")


def build_components(cfg: DictConfig | dict, trusted: bool = True) -> tuple[Any, GaussianDiffusion, Sampler]:
    """Build (net, diffusion, sampler) from a config holding ``model``, ``schedule``, ``diffusion``, ``sampler``.

    ``trusted=False`` (configs read from checkpoints) only lets ``ddpm_lab.*`` targets through.
    """
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    if not trusted:
        for key in ("model", "schedule", "diffusion", "sampler"):
            _check_safe(OmegaConf.to_container(cfg[key], resolve=True), key)
    net = instantiate(cfg.model)
    betas = instantiate(cfg.schedule)
    diffusion = instantiate(cfg.diffusion, betas=betas)
    sampler = instantiate(cfg.sampler)
    return net, diffusion, sampler


def stored_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved, plain-Python part of a run config that a checkpoint needs to rebuild its model."""
    keep = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "schedule", "diffusion", "sampler")}
    keep["dataset"] = {
        "name": cfg.dataset.get("_target_", "").rsplit(".", 1)[-1],
        "image_size": int(cfg.dataset.image_size),
        "channels": int(cfg.dataset.channels),
    }
    return keep
