"""What a config read from disk may build: the allow-list of targets, their old names, and building them.

Configs inside checkpoints and a run's ``.hydra/config.yaml`` are untrusted input. Before anything in them is
resolved or built, :func:`check_safe` refuses any ``_target_`` outside :data:`SAFE_TARGETS`, Hydra's other
special keys (``_partial_``, ``_args_``, ...), interpolations (``${oc.env:...}``, resolvers) and non-plain values.
:func:`build_stored` then calls the allow-listed builders directly, without Hydra: a notebook can load a model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ddpm_lab.diffusion import (
    DDIMSampler,
    DDPMSampler,
    DiffusersSampler,
    DPMSolverSampler,
    GaussianDiffusion,
    Sampler,
    make_betas,
)
from ddpm_lab.errors import UnsafeConfigError
from ddpm_lab.models import UNet

# Each section of a stored model config, and the builders it may name. (A prefix such as ``ddpm_lab.`` would
# not do: ``ddpm_lab.train.os.system`` resolves through module attributes.)
SECTION_BUILDERS: dict[str, dict[str, Callable[..., Any]]] = {
    "model": {"ddpm_lab.models.UNet": UNet},
    "schedule": {"ddpm_lab.diffusion.make_betas": make_betas},
    "diffusion": {"ddpm_lab.diffusion.GaussianDiffusion": GaussianDiffusion},
    "sampler": {
        "ddpm_lab.diffusion.DDPMSampler": DDPMSampler,
        "ddpm_lab.diffusion.DDIMSampler": DDIMSampler,
        "ddpm_lab.diffusion.DPMSolverSampler": DPMSolverSampler,
        "ddpm_lab.diffusion.DiffusersSampler": DiffusersSampler,  # builds only a diffusers scheduler class by name
    },
}
# Datasets only read images; ``evaluate`` builds one from a training run's ``.hydra/config.yaml``.
DATASET_TARGETS = frozenset(
    {
        "ddpm_lab.data.MNISTDataModule",
        "ddpm_lab.data.CIFAR10DataModule",
        "ddpm_lab.data.StanfordCarsDataModule",
        "ddpm_lab.data.ImageFolderDataModule",
        "ddpm_lab.data.DigitsDataModule",
    }
)
# Names that checkpoints and run folders written by ddpm_lab 0.1 (the flat package) carry.
LEGACY_TARGETS = {
    "ddpm_lab.unet.UNet": "ddpm_lab.models.UNet",
    "ddpm_lab.schedules.make_betas": "ddpm_lab.diffusion.make_betas",
    "ddpm_lab.samplers.DDPMSampler": "ddpm_lab.diffusion.DDPMSampler",
    "ddpm_lab.samplers.DDIMSampler": "ddpm_lab.diffusion.DDIMSampler",
    "ddpm_lab.samplers.DPMSolverSampler": "ddpm_lab.diffusion.DPMSolverSampler",
}
SAFE_TARGETS = frozenset(
    {name for builders in SECTION_BUILDERS.values() for name in builders} | DATASET_TARGETS | set(LEGACY_TARGETS)
)


def canonical_target(name: Any) -> Any:
    """Today's name of an allow-listed target (old names map to new ones; anything else is returned as it is)."""
    return LEGACY_TARGETS.get(name, name) if isinstance(name, str) else name


def check_safe(node: Any, where: str) -> None:
    """Refuse, anywhere in ``node``: a target outside :data:`SAFE_TARGETS`, other ``_keys_``, interpolations.

    Raises :class:`~ddpm_lab.errors.UnsafeConfigError` naming the place (``where``) and what was refused.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise UnsafeConfigError(f"{where}: key {key!r} is not a string")
            if key == "_target_":
                if value not in SAFE_TARGETS:
                    raise UnsafeConfigError(
                        f"{where}: refusing to build _target_={value!r}; allowed: {', '.join(sorted(SAFE_TARGETS))}"
                    )
            elif key.startswith("_") and key.endswith("_"):
                raise UnsafeConfigError(f"{where}: refusing the instantiate option {key}")
            check_safe(key, where)
            check_safe(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_safe(value, f"{where}[{i}]")
    elif isinstance(node, str):
        if "${" in node:  # stored configs are saved resolved: an interpolation could call a resolver
            raise UnsafeConfigError(f"{where}: refusing the interpolation {node!r}")
    elif node is not None and not isinstance(node, (bool, int, float)):
        raise UnsafeConfigError(f"{where}: refusing a value of type {type(node).__name__}")


# ``${a.b.c}``: a plain reference to another key. Anything else inside ``${...}`` (``oc.env:``, any resolver) runs code.
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}")
_MAX_DEPTH = 16


def _lookup(config: Any, dotted: str, where: str) -> Any:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise UnsafeConfigError(f"{where}: the interpolation ${{{dotted}}} names no key of the stored config")
        node = node[part]
    return node


def resolve_references(config: dict[str, Any], node: Any, where: str, depth: int = 0) -> Any:
    """``node`` (a part of ``config``) with its plain ``${key}`` references replaced by their values, in pure
    Python: resolvers (``${oc.env:...}``, ``${now:...}``, ...) are refused, never evaluated."""
    if depth > _MAX_DEPTH:
        raise UnsafeConfigError(f"{where}: interpolations nested more than {_MAX_DEPTH} deep")
    if isinstance(node, dict):
        return {k: resolve_references(config, v, f"{where}.{k}", depth) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_references(config, v, f"{where}[{i}]", depth) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node
    whole = _REFERENCE.fullmatch(node)
    if whole:
        return resolve_references(config, _lookup(config, whole.group(1), where), where, depth + 1)

    def text(match: re.Match[str]) -> str:
        value = resolve_references(config, _lookup(config, match.group(1), where), where, depth + 1)
        if isinstance(value, (dict, list)):
            raise UnsafeConfigError(f"{where}: ${{{match.group(1)}}} is not a plain value")
        return str(value)

    resolved = _REFERENCE.sub(text, node)
    if "${" in resolved:
        raise UnsafeConfigError(
            f"{where}: refusing the interpolation {node!r} (only plain ${{key}} references are followed)"
        )
    return resolved


def safe_stored_config(config: Any) -> dict[str, dict[str, Any]]:
    """The model sections of a stored config, checked (see :func:`check_safe`), with today's target names."""
    if not isinstance(config, dict):
        raise UnsafeConfigError(f"the stored config is a {type(config).__name__}, not a mapping")
    sections = {}
    for key, builders in SECTION_BUILDERS.items():
        section = config.get(key)
        target = canonical_target(section.get("_target_")) if isinstance(section, dict) else None
        if not isinstance(target, str) or target not in builders:
            raise UnsafeConfigError(f"{key}: must build one of {', '.join(builders)}, got {section!r:.200}")
        check_safe(section, key)
        sections[key] = {**section, "_target_": target}
    return sections


def _call(section: str, node: dict[str, Any], **extra: Any) -> Any:
    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    return SECTION_BUILDERS[section][node["_target_"]](**kwargs, **extra)


def build_model(config: Any) -> UNet:
    """The network of a stored config, checked first (call it under ``torch.device("meta")`` to size it for free)."""
    return _call("model", safe_stored_config(config)["model"])


def build_stored(config: Any) -> tuple[UNet, GaussianDiffusion, Sampler]:
    """(net, diffusion, sampler) from a stored config, checked first; no Hydra, no ``instantiate``."""
    sections = safe_stored_config(config)
    net = _call("model", sections["model"])
    betas = _call("schedule", sections["schedule"], warn=False)
    diffusion = _call("diffusion", sections["diffusion"], betas=betas)
    return net, diffusion, _call("sampler", sections["sampler"])
