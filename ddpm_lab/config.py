"""Hydra side: where the configs live, custom resolvers, and building objects from (trusted or stored) configs."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.diffusion import GaussianDiffusion
from ddpm_lab.samplers import Sampler

# What a config read back from a checkpoint may instantiate: exactly the project's own builders, nothing else.
# (A prefix such as ``ddpm_lab.`` would not do: ``ddpm_lab.train.os.system`` resolves through module attributes.)
SAFE_TARGETS = frozenset({
    "ddpm_lab.unet.UNet",
    "ddpm_lab.schedules.make_betas",
    "ddpm_lab.diffusion.GaussianDiffusion",
    "ddpm_lab.samplers.DDPMSampler",
    "ddpm_lab.samplers.DDIMSampler",
    "ddpm_lab.samplers.DPMSolverSampler",
    # Datasets only read images; evaluate builds one from a run's .hydra/config.yaml.
    "ddpm_lab.data.MNISTDataModule",
    "ddpm_lab.data.CIFAR10DataModule",
    "ddpm_lab.data.StanfordCarsDataModule",
    "ddpm_lab.data.ImageFolderDataModule",
})
# Each stored config section must build one of these (so a section cannot be swapped for another allowed target).
SECTION_TARGETS = {
    "model": ("ddpm_lab.unet.UNet",),
    "schedule": ("ddpm_lab.schedules.make_betas",),
    "diffusion": ("ddpm_lab.diffusion.GaussianDiffusion",),
    "sampler": ("ddpm_lab.samplers.DDPMSampler", "ddpm_lab.samplers.DDIMSampler", "ddpm_lab.samplers.DPMSolverSampler"),
}


class UnsafeConfigError(ValueError):
    """A stored config asks ``instantiate`` for something outside the allow-list."""

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

_IMPORTED_AT = time.time()  # before @hydra.main creates this launch's run folder


def discard_fresh_run_folder() -> None:
    """After an error that stopped a launch before any work: remove what Hydra created for it, nothing else.

    Hydra writes ``<run>/.hydra/*.yaml`` and ``<run>/<job>.log`` before the task function runs. A folder is
    removed only when it holds nothing else and all of it is younger than this process; a resumed run keeps its
    folder and loses only this launch's ``.hydra/resume_<time>/``.
    """
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    run = Path(hc.runtime.output_dir)
    subdir = run / hc.output_subdir if hc.output_subdir else None
    if subdir is not None and subdir.parent.name == ".hydra" and subdir.name != ".hydra":  # a resume launch
        candidate, allowed = subdir, set()
    else:
        candidate, allowed = run, {".hydra", f"{hc.job.name}.log"}
    if not candidate.is_dir() or (allowed and not {p.name for p in candidate.iterdir()} <= allowed):
        return
    files = [p for p in candidate.rglob("*")]
    if all(p.stat().st_mtime >= _IMPORTED_AT - 1 and (p.is_dir() or p.suffix in (".yaml", ".log")) for p in files):
        shutil.rmtree(candidate, ignore_errors=True)
        _remove_created_parents(candidate.absolute())


def _remove_created_parents(folder: Path) -> None:
    """Remove the now-empty parents (e.g. ``outputs/train``) that Hydra created for a discarded run folder."""
    from ddpm_lab.resume import EXISTED_BEFORE

    keep = EXISTED_BEFORE.get(folder)
    parent = folder.parent
    while keep is not None and parent != keep and keep in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _check_safe(node: Any, where: str) -> None:
    """Refuse, anywhere in a stored config: a ``_target_`` outside :data:`SAFE_TARGETS`, and interpolations."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise UnsafeConfigError(f"{where}: key {key!r} is not a string")
            if key == "_target_" and value not in SAFE_TARGETS:
                raise UnsafeConfigError(f"{where}: refusing to build _target_={value!r}; allowed: {', '.join(sorted(SAFE_TARGETS))}")
            _check_safe(key, where)
            _check_safe(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _check_safe(value, f"{where}[{i}]")
    elif isinstance(node, str):
        if "${" in node:  # stored configs are saved resolved: an interpolation could call a resolver
            raise UnsafeConfigError(f"{where}: refusing the interpolation {node!r}")
    elif node is not None and not isinstance(node, (bool, int, float)):
        raise UnsafeConfigError(f"{where}: refusing a value of type {type(node).__name__}")


def safe_stored_config(config: Any) -> DictConfig:
    """A config read from a checkpoint, checked (see :func:`_check_safe`) before anything is built from it."""
    if not isinstance(config, dict):
        raise UnsafeConfigError(f"the stored config is a {type(config).__name__}, not a mapping")
    for key, targets in SECTION_TARGETS.items():
        section = config.get(key)
        if not isinstance(section, dict) or section.get("_target_") not in targets:
            raise UnsafeConfigError(f"{key}: must build one of {', '.join(targets)}, got {section!r:.200}")
        _check_safe(section, key)
    return OmegaConf.create({key: config[key] for key in SECTION_TARGETS})


def build_components(cfg: DictConfig | dict, trusted: bool = True) -> tuple[Any, GaussianDiffusion, Sampler]:
    """Build (net, diffusion, sampler) from a config holding ``model``, ``schedule``, ``diffusion``, ``sampler``.

    ``trusted=False`` (configs read from checkpoints): only :data:`SAFE_TARGETS` may be built; raises
    :class:`UnsafeConfigError` before anything is instantiated.
    """
    if not trusted:
        cfg = safe_stored_config(OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else cfg)
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
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
