"""Building objects from trusted (composed) configs, and what a training run stores in its checkpoints."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddpm_lab.artifacts.allow_list import SECTIONS
from ddpm_lab.artifacts.checkpoint import make_stored_config
from ddpm_lab.config.location import config_dir
from ddpm_lab.data.augment import augment_dim
from ddpm_lab.diffusion import DiffusionProcess, Sampler
from ddpm_lab.errors import ConfigError, UserError, check_flag, check_number, first_line
from ddpm_lab.training import DiffusionModule

# What a constructor raises for a value it refuses (ours raise ConfigError, a ValueError), and Hydra for a
# _target_ it cannot import.
_REFUSALS = (UserError, ValueError, TypeError, ImportError, OmegaConfBaseException)


def _reason(error: BaseException) -> BaseException:
    """The exception behind Hydra's ``InstantiationException`` wrappers (the constructor's own)."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error


def name_key(message: str, key: str) -> str:
    """A constructor's message with the config key it names rewritten for where the node really sits.

    ``sampler.steps must be ...`` raised while building ``callbacks.sample_grid.sampler`` becomes
    ``callbacks.sample_grid.sampler.steps must be ...``; a message naming no key gets ``key: `` in front.
    """
    section = key.rsplit(".", 1)[-1]
    if message.startswith(key + ".") or message.startswith(key + "="):
        return message
    if message.startswith(section + ".") or message.startswith(section + "="):
        return key + message[len(section) :]
    return f"{key}: {message}"


def build(key: str, node: Any, **kwargs: Any) -> Any:
    """``instantiate(node)``, with a refused value reported as one line naming ``key`` and the real reason.

    A :class:`UserError` keeps its class (e.g. a missing weights file); other refusals become
    :class:`ConfigError`. Anything else (a bug) propagates with its traceback.
    """
    try:
        return instantiate(node, **kwargs)
    except Exception as e:
        reason = _reason(e)
        if isinstance(e, InstantiationException) and reason is e:  # Hydra's own: e.g. a _target_ that does not exist
            raise ConfigError(name_key(first_line(e), key)) from e
        if not isinstance(reason, _REFUSALS):
            raise reason from None  # a bug: its own exception and traceback, not Hydra's wrapper
        message = name_key(first_line(reason), key)
        if isinstance(reason, UserError):
            raise type(reason)(message) from e
        raise ConfigError(message) from e


def build_all(group: DictConfig | None, key: str) -> list[Any]:
    """Build every entry of a dict-of-configs group (callbacks, loggers), skipping nulls."""
    if not group:
        return []
    return [build(f"{key}.{name}", node) for name, node in group.items() if node is not None and "_target_" in node]


def schedule_options(timesteps: int, selected: DictConfig | None = None) -> dict[str, torch.Tensor]:
    """β of every ``configs/schedule/*.yaml`` at ``timesteps`` steps.

    ``selected`` (the run's schedule, with its overrides) replaces the option of the same name.
    """
    schedules: dict[str, torch.Tensor] = {}
    for path in sorted(Path(config_dir(), "schedule").glob("*.yaml")):
        node = OmegaConf.load(path)
        if selected is not None and node.get("name") == selected.get("name"):
            node = selected
        schedules[path.stem] = build("schedule", node, timesteps=timesteps, warn=False)
    return schedules


def augment_labels_dim(cfg: DictConfig) -> int:
    """The length of the augmentation labels ``dataset.augment`` feeds the network (0: no augmentation)."""
    dataset = cfg.get("dataset")
    if not isinstance(dataset, DictConfig):
        return 0
    p = check_number(dataset.get("augment", 0.0), "dataset.augment", float, 0, 1)
    rotate = check_flag(dataset.get("augment_rotate", False), "dataset.augment_rotate")
    return augment_dim(rotate) if p > 0 else 0


def model_node(cfg: DictConfig) -> DictConfig:
    """``cfg.model``, with what follows from other sections: ``out_channels`` = 2 × ``in_channels`` when
    ``diffusion.variance=learned_range`` (the network's extra half is v, Nichol & Dhariwal, eq. 15), and
    ``augment_dim`` when ``dataset.augment`` > 0 (the network is conditioned on the augmentation, EDM)."""
    learned = cfg.diffusion.get("variance", "fixed") == "learned_range"
    augment = augment_labels_dim(cfg)
    if not learned and not augment:
        return cfg.model
    node = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    if learned:
        node.out_channels = 2 * int(node.in_channels)
    if augment:
        node.augment_dim = augment
    return node


def build_components(
    cfg: DictConfig, device: str | torch.device | None = None, warn: bool = True
) -> tuple[Any, DiffusionProcess, Sampler]:
    """(net, diffusion, sampler) from a composed config.

    ``device="meta"`` sizes the network without memory (for checks); ``warn`` is the schedule's small-T warning.
    """
    betas = build("schedule", cfg.schedule, warn=warn)
    diffusion = build("diffusion", cfg.diffusion, betas=betas)
    sampler = build("sampler", cfg.sampler)
    with torch.device(device) if device is not None else nullcontext():
        net = build("model", model_node(cfg))
    return net, diffusion, sampler


def build_module(cfg: DictConfig, net: Any, diffusion: DiffusionProcess, sampler: Sampler) -> DiffusionModule:
    """The LightningModule of a training config, around already built components."""
    try:
        return DiffusionModule(
            net=net,
            diffusion=diffusion,
            sampler=sampler,
            optimizer=build("optimizer", cfg.optimizer),
            warmup_steps=cfg.warmup_steps,
            lr_schedule=build("lr_schedule", cfg.lr_schedule) if cfg.get("lr_schedule") else None,
            config=stored_config(cfg),
            compile_net=bool(cfg.get("compile", False)),
            channels_last=bool(cfg.get("channels_last", True)),
            p_uncond=label_dropout(cfg),
            val_bpd_every=cfg.get("val_bpd_every", 0),
            val_bpd_stride=cfg.get("val_bpd_stride", 10),
        )
    except UserError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(first_line(e)) from e


def label_dropout(cfg: DictConfig) -> float:
    """The label dropout of a ``conditioning=class`` run (0 for an unconditional one)."""
    if OmegaConf.select(cfg, "conditioning.kind", default="none") != "class":
        return 0.0
    return OmegaConf.select(cfg, "conditioning.p_uncond", default=0.0)


def class_names(cfg: DictConfig) -> list[str] | None:
    """The class names ``condition_on_dataset`` filled in (None for an unconditional run)."""
    names = OmegaConf.select(cfg, "conditioning.class_names", default=None)
    return [str(name) for name in names] if names else None


def group_choices() -> dict[str, str]:
    """The config-group options this Hydra job was composed from (``{"model": "unet_small", ...}``)."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: str(v) for k, v in choices.items() if v is not None and not k.startswith("hydra")}


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    """The run config as plain data, resolved where it can be (``${hydra:...}`` only resolves inside a launch)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(cfg, resolve=False)


def stored_config(cfg: DictConfig) -> dict[str, Any]:
    """What every checkpoint of a run stores (``artifacts.checkpoint.make_stored_config``), from its composed config:
    the resolved model sections, the dataset's name, size, channels and class names, the run config and choices."""
    sections = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in SECTIONS}
    sections["model"] = OmegaConf.to_container(model_node(cfg), resolve=True)
    return make_stored_config(
        sections,
        dataset_name=cfg.dataset.get("_target_", "").rsplit(".", 1)[-1],
        image_size=cfg.dataset.image_size,
        channels=cfg.dataset.channels,
        class_names=class_names(cfg),
        run_config=_resolved(cfg),
        choices=group_choices(),
    )
