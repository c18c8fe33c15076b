"""The ``conditioning`` config group: what a training run conditions its network on, and filling in the class
count and names from the dataset, so they are never typed by hand (Ho & Salimans, 2022, classifier-free guidance).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, open_dict

from ddpm_lab.artifacts.checkpoint import checkpoint_config, read_checkpoint
from ddpm_lab.config.build import build
from ddpm_lab.errors import ConfigError, DatasetError, ResumeError, check_choice, check_number

log = logging.getLogger(__name__)

KINDS = ("none", "class")


@dataclass(frozen=True)
class Conditioning:
    """``kind``: ``none`` (unconditional, the default) or ``class`` (the dataset's labels).

    ``p_uncond``: label dropout in [0, 1) (0.1 in Ho & Salimans): the fraction of training labels replaced by the
    null class, so the one network also learns the unconditional model guidance needs. ``class_names`` is filled
    in from the dataset by :func:`condition_on_dataset`, not set by hand.
    """

    kind: str = "none"
    p_uncond: float = 0.1
    class_names: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        check_choice(self.kind, "conditioning.kind", KINDS)
        check_number(self.p_uncond, "conditioning.p_uncond", float, 0, 1, high_open=True)

    @property
    def conditional(self) -> bool:
        return self.kind == "class"


def conditioning_of(cfg: DictConfig) -> Conditioning:
    """The run's :class:`Conditioning` (unconditional when the config has no ``conditioning`` section)."""
    node = cfg.get("conditioning")
    return build("conditioning", node) if node is not None else Conditioning()


def _dataset_name(cfg: DictConfig) -> str:
    return str(cfg.dataset.get("_target_", "the dataset")).rsplit(".", 1)[-1]


def condition_on_dataset(cfg: DictConfig) -> Conditioning:
    """Check the ``conditioning`` section against the dataset and fill in what follows from it.

    ``conditioning=class``: sets ``model.num_classes`` and ``conditioning.class_names`` from the data module's
    classes (refusing a dataset without labels, and a ``model.num_classes`` typed by hand that differs). An
    unconditional run's config is left exactly as it is.
    """
    conditioning = conditioning_of(cfg)
    given = cfg.model.get("num_classes") if isinstance(cfg.get("model"), DictConfig) else None
    if isinstance(cfg.get("model"), DictConfig) and cfg.model.get("null_class", True) is not True:
        raise ConfigError(
            f"model.null_class={cfg.model.null_class}: ddpm_lab trains class-conditional models with their null "
            "class (label dropout, guidance): leave model.null_class out"
        )
    if not conditioning.conditional:
        if given:
            raise ConfigError(
                f"model.num_classes={given} but conditioning=none: train a class-conditional model with "
                "conditioning=class (it sets model.num_classes from the dataset)"
            )
        return conditioning
    names: Any = build("dataset", cfg.dataset).class_names
    if not names:
        raise DatasetError(
            f"conditioning=class needs class labels, but {_dataset_name(cfg)} under {cfg.dataset.get('root')} has "
            "none: put the images in one sub-folder per class, or train with conditioning=none"
        )
    names = [str(name) for name in names]
    if given not in (None, 0, len(names)):
        raise ConfigError(
            f"model.num_classes={given} but the dataset has {len(names)} classes: leave model.num_classes out, "
            "conditioning=class sets it from the dataset"
        )
    with open_dict(cfg):
        cfg.model.num_classes = len(names)
        cfg.conditioning.class_names = names
    return Conditioning(conditioning.kind, conditioning.p_uncond, names)


def _shown(names: list[str]) -> str:
    return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")


def keep_checkpoint_classes(cfg: DictConfig, ckpt_path: str | os.PathLike | None) -> None:
    """A run continued from ``ckpt_path`` (``resume=`` or ``ckpt_path=``) keeps the labels its weights learned.

    When the checkpoint stores the dataset's class names in another order (a run from before class folders sorted
    naturally: ``1, 10, 2, …``), ``dataset.class_names`` and ``conditioning.class_names`` take the stored order, so
    label k keeps meaning the class it meant. A resumed run whose dataset has other classes is refused; fine-tuning
    onto other classes (``ckpt_path=``) is allowed, with a warning.
    """
    names = cfg.conditioning.get("class_names") if conditioning_of(cfg).conditional else None
    if not ckpt_path or not names:
        return
    dataset = checkpoint_config(read_checkpoint(ckpt_path, mmap=True), ckpt_path).get("dataset") or {}
    stored = dataset.get("class_names")
    if not isinstance(stored, list) or [str(n) for n in stored] == list(names):
        return
    stored = [str(n) for n in stored]
    if sorted(stored) != sorted(names):
        if cfg.get("resume"):
            raise ResumeError(
                f"resume={cfg.resume}: its checkpoint was trained on the classes {_shown(stored)}, but the dataset "
                f"now has {_shown(list(names))}: resume with the data it was trained on"
            )
        log.warning(
            "ckpt_path=%s was trained on other classes (%s): its labels now mean %s",
            ckpt_path,
            _shown(stored),
            _shown(list(names)),
        )
        return
    log.info("class labels follow %s: %s", ckpt_path, ", ".join(stored))
    with open_dict(cfg):
        cfg.dataset.class_names = stored
        cfg.conditioning.class_names = stored
