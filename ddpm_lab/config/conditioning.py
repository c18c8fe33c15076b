"""The ``conditioning`` config group: what a training run conditions its network on, and filling in the class
count and names from the dataset, so they are never typed by hand (Ho & Salimans, 2022, classifier-free guidance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, open_dict

from ddpm_lab.config.build import build
from ddpm_lab.errors import ConfigError, DatasetError, check_choice, check_number

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
