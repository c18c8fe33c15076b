"""What ``sample`` and ``evaluate`` ask of a class-conditional checkpoint: classes and guidance scales.

``evaluate`` takes one guidance scale w or a list (Hydra's sweep syntax ``guidance=0,1,2,4`` is read as one run
over that list); ``sample`` takes ``class``, ``per_class`` and one ``guidance``. Both are refused, in one line and
before any sampling, when the checkpoint cannot do what they ask.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import OmegaConf

from ddpm_lab.artifacts.trained_model import LoadedModel
from ddpm_lab.diffusion.guidance import NO_NULL_CLASS, has_null_class
from ddpm_lab.errors import ConfigError, check_list


def _is_list(value: Any) -> bool:
    return OmegaConf.is_list(value) or isinstance(value, (list, tuple))


def parse_guidance(value: Any) -> list[float] | None:
    """``guidance``: null, one scale w >= 0 or a list of them (``guidance=0,1,2,4``), as a list (None: null)."""
    if value is None:
        return None
    items = list(value) if _is_list(value) else [value]
    try:
        return check_list(items, "guidance", float, low=0)
    except ConfigError:
        shown = ",".join(map(str, items)) if _is_list(value) else value
        raise ConfigError(
            f"guidance must be a number >= 0 or a list of them, got {shown!r}: set guidance=2 or guidance=0,1,2,4"
        ) from None


def guidance_scales(
    scales: Sequence[float] | None, num_classes: int, ckpt: str, rescale: float = 0.0, null_class: bool = True
) -> list[float] | None:
    """The guidance scales w to evaluate: None for an unconditional checkpoint (which takes none), else a list.

    Refused in one line: guidance or ``guidance_rescale`` for an unconditional checkpoint, ``guidance_rescale``
    without a scale it could rescale (w != 1), and w != 1 for a checkpoint without a null class.
    """
    if not num_classes:
        given = [f"guidance={','.join(f'{w:g}' for w in scales)}"] if scales is not None else []
        given += [f"guidance_rescale={rescale:g}"] if rescale else []
        if given:
            raise ConfigError(
                f"{given[0]} needs a class-conditional checkpoint, but "
                f"{ckpt} is unconditional: leave guidance out (or train one with conditioning=class)"
            )
        return None
    scales = [1.0] if scales is None else list(scales)  # null: the conditional model, unguided
    if rescale and all(w == 1.0 for w in scales):
        raise ConfigError(
            f"guidance_rescale={rescale:g} rescales guided outputs, but guidance is 1 (none): "
            "add guidance=<w> (e.g. guidance=5) or leave guidance_rescale out"
        )
    if not null_class and (rescale or any(w != 1.0 for w in scales)):
        raise ConfigError(f"guidance={','.join(f'{w:g}' for w in scales)} for {ckpt}: {NO_NULL_CLASS}")
    return scales


def guidance_as_list(argv: list[str]) -> list[str]:
    """``guidance=0,1,2,4`` (Hydra's sweep syntax) as one run over the list ``[0,1,2,4]``, unless ``--multirun``."""
    if any(a in ("-m", "--multirun") for a in argv):
        return argv
    return [f"guidance=[{a[9:]}]" if re.fullmatch(r"guidance=[^\[\]'\"]*,[^\[\]'\"]*", a) else a for a in argv]


def class_labels(
    asked: int | str | tuple[int | str, ...] | None,
    per_class: int | None,
    guidance: float | None,
    n: int,
    model: LoadedModel,
    rescale: float = 0.0,
) -> tuple[list[int] | None, torch.Tensor | None]:
    """``sample``'s (classes asked for, one label per image) from ``class`` (one class, or a tuple of them),
    ``per_class``, ``guidance`` and ``guidance_rescale``; (None, None) for unconditional samples. Refuses, in one
    line and before any sampling, what the checkpoint cannot do and every option that would be ignored."""
    values = list(asked) if isinstance(asked, tuple) else [asked]
    if not model.num_classes:
        shown = values if isinstance(asked, tuple) else asked
        given = [
            f"{k}={v}" for k, v in (("class", shown), ("per_class", per_class), ("guidance", guidance)) if v is not None
        ] + ([f"guidance_rescale={rescale:g}"] if rescale else [])
        if given:
            raise ConfigError(
                f"{given[0]} needs a class-conditional checkpoint, but {model.path} is unconditional (trained with "
                "conditioning=none): leave out class, per_class and guidance, or train with conditioning=class"
            )
        return None, None
    if asked is not None and not values:
        raise ConfigError("class is an empty list: name at least one class, e.g. class=[0,1]")
    classes = [model.class_index(v) for v in values] if asked is not None else None
    if classes is None and per_class is not None:
        classes = list(range(model.num_classes))
    null_class = has_null_class(model.net)
    if classes is None:
        if guidance is not None or rescale:
            shown = f"guidance={guidance}" if guidance is not None else f"guidance_rescale={rescale:g}"
            raise ConfigError(
                f"{shown} needs classes to guide towards: add class=<name or index> or per_class=<N> "
                "(without them, samples are unconditional)"
            )
        if not null_class:
            raise ConfigError(f"unconditional samples of {model.path}: {NO_NULL_CLASS} (class= or per_class=)")
        return None, None
    w = 1.0 if guidance is None else float(guidance)
    if rescale and w == 1.0:
        raise ConfigError(
            f"guidance_rescale={rescale:g} rescales guided outputs, but guidance is 1 (none): "
            "add guidance=<w> (e.g. guidance=5) or leave guidance_rescale out"
        )
    if not null_class and w != 1.0:
        raise ConfigError(f"guidance={guidance} for {model.path}: {NO_NULL_CLASS}")
    if per_class is not None:
        return classes, torch.tensor(classes).repeat_interleave(per_class)
    return classes, torch.tensor(classes).repeat(-(-n // len(classes)))[:n]
