"""Classes are names, not positions: the one mapping from class names to label indices, in every command.

A run's label k is the k-th of its dataset's class names (``dataset.class_names``, else fixed names such as MNIST's
digits, else the class folders in natural order: ``1, 2, …, 10``, not ``1, 10, 2``), and every checkpoint stores
that list. Readers go by the stored names: ``sample class=`` (:func:`resolve_class`), ``evaluate``'s classifier
and class mix (:func:`label_map`), a resumed or fine-tuned run's labels. A checkpoint written before natural
order keeps its stored (string-sorted) names, so its labels keep meaning what they meant.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

import torch

from ddpm_lab.errors import ConfigError

__all__ = ["natural_order", "numeric_names", "resolve_class", "label_map", "check_class_names"]

_DIGITS = re.compile(r"(\d+)")


def _natural_key(name: str) -> tuple[list[str | int], str]:
    """Digit runs compare as numbers (``class2`` < ``class10``); the name itself breaks ties (``01`` vs ``1``)."""
    parts = _DIGITS.split(name)
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], name


def natural_order(names: Iterable[str]) -> list[str]:
    """The distinct ``names`` in natural order: ``["1", "2", "10"]``, ``["cat", "dog"]``, ``["img2", "img10"]``."""
    return sorted({str(name) for name in names}, key=_natural_key)


def numeric_names(names: Sequence[str] | None) -> bool:
    """Whether every class name is a whole number (``1`` … ``10``): then ``class=1`` means the class named 1."""
    return bool(names) and all(re.fullmatch(r"[+-]?\d+", str(name).strip()) for name in names)


def check_class_names(names: object, key: str = "dataset.class_names") -> list[str] | None:
    """``names`` as a list of distinct, non-empty strings (None stays None); a one-line ConfigError otherwise."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise ConfigError(f"{key} must be a list of class names, got {names!r}: e.g. {key}=[cat,dog]")
    out = [str(name) for name in names]
    if not out or any(not name.strip() for name in out):
        raise ConfigError(f"{key} must name at least one class and no empty name, got {out}")
    doubled = sorted({name for name in out if out.count(name) > 1})
    if doubled:
        raise ConfigError(f"{key} names {doubled[0]!r} twice: each class once, in label order")
    return out


def _as_index(value: int | str) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else None


def resolve_class(
    value: int | str,
    num_classes: int,
    class_names: Sequence[str] | None,
    key: str = "class",
    path: str | os.PathLike = "this checkpoint",
) -> int:
    """The label ``value`` names. A class name wins (``cat``, or ``7`` when a class is named 7); when every name
    is a number, a number is a name only (``class=1`` is the class named 1, whatever its index); otherwise an
    integer in ``[0, num_classes)`` is an index.

    Raises :class:`~ddpm_lab.errors.ConfigError` (one line, the valid choices) for an unconditional model, an
    unknown name or an index out of range.
    """
    if not num_classes:
        raise ConfigError(
            f"{key}={value} needs a class-conditional model, but {path} is unconditional: "
            "train one with conditioning=class, or leave out class/per_class/guidance"
        )
    names = [str(name) for name in class_names or []]
    text = str(value).strip()
    if not isinstance(value, bool) and text in names:
        return names.index(text)
    index = _as_index(value)
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    if numeric_names(names):
        same = [k for k, name in enumerate(names) if index is not None and int(name) == index]
        if len(same) == 1:  # class=1 for a folder named 01
            return same[0]
        raise ConfigError(
            f"{key}={value} is not one of the model's {num_classes} classes, which are named by numbers "
            f"({shown}): name one of them (class=<name> picks the class of that name, not an index)"
        )
    if index is not None and 0 <= index < num_classes:
        return index
    raise ConfigError(
        f"{key}={value} is not one of the model's {num_classes} classes: use an index 0..{num_classes - 1}"
        + (f" or a name ({shown})" if names else "")
    )


def label_map(source: Sequence[str], target: Sequence[str]) -> torch.Tensor:
    """A lookup table: ``table[k]`` is the index in ``target`` of ``source[k]``'s name, −1 where ``target`` has no
    class of that name. ``table[labels]`` turns labels of ``source``'s order into ``target``'s."""
    where = {str(name): k for k, name in enumerate(target)}
    return torch.tensor([where.get(str(name), -1) for name in source], dtype=torch.long)
