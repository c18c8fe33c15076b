"""What a config read from disk may build: the allow-list of targets, and building them.

Configs inside checkpoints and a run's ``.hydra/config.yaml`` are untrusted input. Before anything in them is
resolved or built, :func:`check_safe` refuses any ``_target_`` outside :func:`safe_targets`, Hydra's other
special keys (``_partial_``, ``_args_``, ...), interpolations (``${oc.env:...}``, resolvers) and non-plain values.
:func:`build_stored` then calls the allow-listed builders directly, without Hydra: a notebook can load a model.

The allow-list is derived from the tables the code registers its pieces in (``MODELS``, ``SAMPLERS``), so a
network or sampler added there is one a checkpoint may name; ``train`` checks at launch that what its checkpoints
will store passes (``config.checks.check_storable``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ddpm_lab.diffusion import SAMPLERS, DiffusionProcess, EDMDiffusion, GaussianDiffusion, Sampler, make_betas
from ddpm_lab.errors import UnsafeConfigError
from ddpm_lab.models import MODELS

# The sections of a stored config that rebuild the model, in the order they are built.
SECTIONS = ("model", "schedule", "diffusion", "sampler")
# Datasets only read images; ``evaluate`` builds one from a training run's ``.hydra/config.yaml``. (They live in a
# higher layer, ``ddpm_lab.data``, so the names are kept here; tests bind them to the dataset configs and classes.)
DATASET_TARGETS = frozenset(
    {
        "ddpm_lab.data.MNISTDataModule",
        "ddpm_lab.data.CIFAR10DataModule",
        "ddpm_lab.data.StanfordCarsDataModule",
        "ddpm_lab.data.ImageFolderDataModule",
        "ddpm_lab.data.DigitsDataModule",
        "ddpm_lab.data.StreamingDataModule",
    }
)
# How to make a new target of each stored section (and a dataset) one that checkpoints may name.
HOW_TO_REGISTER = {
    "model": "add the network to MODELS in ddpm_lab/models/__init__.py and export it from ddpm_lab.models",
    "schedule": "use ddpm_lab.diffusion.make_betas (a new schedule is a name in SCHEDULES, diffusion/schedules.py)",
    "diffusion": "use ddpm_lab.diffusion.GaussianDiffusion or ddpm_lab.diffusion.EDMDiffusion",
    "sampler": "add the sampler to SAMPLERS in ddpm_lab/diffusion/samplers.py and export it from ddpm_lab.diffusion",
    "dataset": "add it to DATASET_TARGETS in ddpm_lab/artifacts/allow_list.py",
}


def target_name(builder: Callable[..., Any]) -> str:
    """The ``_target_`` configs name ``builder`` by: its subpackage's export when there is one
    (``ddpm_lab.diffusion.DDIMSampler``, defined in ``ddpm_lab.diffusion.samplers``), else its own module's name."""
    package = ".".join(builder.__module__.split(".")[:2])
    if getattr(sys.modules.get(package), builder.__name__, None) is builder:
        return f"{package}.{builder.__name__}"
    return f"{builder.__module__}.{builder.__qualname__}"


def _by_target(builders: Iterable[Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    return {target_name(builder): builder for builder in builders}


def section_builders() -> dict[str, dict[str, Callable[..., Any]]]:
    """Each section of a stored config and the builders it may name, by exact target name (a prefix such as
    ``ddpm_lab.`` would not do: ``ddpm_lab.train.os.system`` resolves through module attributes).

    Read from the registries on each call, so a sampler registered at run time is allowed too. ``DiffusersSampler``
    (in ``SAMPLERS`` as ``diffusers``) builds only a diffusers scheduler class by name.
    """
    return {
        "model": _by_target(MODELS.values()),
        "schedule": _by_target([make_betas]),
        "diffusion": _by_target([GaussianDiffusion, EDMDiffusion]),
        "sampler": _by_target(SAMPLERS.values()),
    }


def safe_targets() -> frozenset[str]:
    """Every ``_target_`` a config read from disk may name: the section builders and the datasets."""
    return frozenset(name for builders in section_builders().values() for name in builders) | DATASET_TARGETS


def check_safe(node: Any, where: str) -> None:
    """Refuse, anywhere in ``node``: a target outside :func:`safe_targets`, other ``_keys_``, interpolations.

    Raises :class:`~ddpm_lab.errors.UnsafeConfigError` naming the place (``where``) and what was refused.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise UnsafeConfigError(f"{where}: key {key!r} is not a string")
            if key == "_target_":
                allowed = safe_targets()
                if value not in allowed:
                    raise UnsafeConfigError(
                        f"{where}: refusing to build _target_={value!r}; allowed: {', '.join(sorted(allowed))}"
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
    """The model sections of a stored config, checked (see :func:`check_safe`): each names one of its builders."""
    if not isinstance(config, dict):
        raise UnsafeConfigError(f"the stored config is a {type(config).__name__}, not a mapping")
    sections = {}
    for key, builders in section_builders().items():
        section = config.get(key)
        target = section.get("_target_") if isinstance(section, dict) else None
        if not isinstance(target, str) or target not in builders:
            raise UnsafeConfigError(f"{key}: must build one of {', '.join(builders)}, got {section!r:.200}")
        check_safe(section, key)
        sections[key] = section
    return sections


def _call(section: str, node: dict[str, Any], **extra: Any) -> Any:
    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    return section_builders()[section][node["_target_"]](**kwargs, **extra)


def build_model(config: Any) -> nn.Module:
    """The network of a stored config, checked first (call it under ``torch.device("meta")`` to size it for free)."""
    return _call("model", safe_stored_config(config)["model"])


def build_stored(config: Any) -> tuple[nn.Module, DiffusionProcess, Sampler]:
    """(net, diffusion, sampler) from a stored config, checked first; no Hydra, no ``instantiate``."""
    sections = safe_stored_config(config)
    net = _call("model", sections["model"])
    betas = _call("schedule", sections["schedule"], warn=False)
    diffusion = _call("diffusion", sections["diffusion"], betas=betas)
    return net, diffusion, _call("sampler", sections["sampler"])
