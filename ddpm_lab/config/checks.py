"""Checks that span config sections, run before any work: every mistake becomes one :class:`ConfigError` line.

Value checks of a single setting live in the constructors (a ``sampler.eta`` of 1.5 is refused by
``DDIMSampler``); this module builds the cheap parts (schedule, diffusion, samplers, the network on the
``meta`` device, the data module's constructor) so those checks fire, and adds what no constructor can know:
sampler vs schedule, model vs dataset, trainer vs machine, a continued checkpoint vs the model.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import typing
from typing import Any

import torch
from lightning_fabric.connector import _PRECISION_INPUT
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.accelerators import AcceleratorRegistry

from ddpm_lab.artifacts.allow_list import DATASET_TARGETS, HOW_TO_REGISTER, safe_stored_config, section_builders
from ddpm_lab.artifacts.checkpoint import checkpoint_config, checkpoint_file, read_checkpoint
from ddpm_lab.artifacts.posthoc_ema import STATE_KEY
from ddpm_lab.config.build import build, build_components, build_module, model_node, name_key, stored_config
from ddpm_lab.config.conditioning import condition_on_dataset, keep_checkpoint_classes
from ddpm_lab.config.loggers import logger_row
from ddpm_lab.config.run_folder import writable_folder
from ddpm_lab.diffusion import DiffusionProcess, Sampler, SigmaSampler
from ddpm_lab.errors import ConfigError, UnsafeConfigError, check_flag, check_number, first_line

log = logging.getLogger(__name__)

# A DDPM chain this short with σ² = β_t is far worse than with the posterior variance (Nichol & Dhariwal 2021:
# FID ≈ 46 vs ≈ 11 on CIFAR-10 at 100 steps).
SHORT_CHAIN = 500


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


# How to fill in a value a config leaves as ``???``; other keys get the generic ``set <key>=<value>``.
_REQUIRED_HINTS = {
    "dataset.root": "dataset.root=<folder of images>",
    "ckpt": "ckpt=<run>/checkpoints/last.ckpt",
}


def _missing(node: Any, prefix: str = "") -> list[str]:
    """The keys of a plain (unresolved) config whose value is ``???``."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return [prefix[:-1]] if node == "???" else []
    return [key for name, child in items for key in _missing(child, f"{prefix}{name}.")]


def check_required(cfg: DictConfig) -> None:
    """Every value the config leaves as ``???`` (e.g. ``dataset.root`` of ``dataset=image_folder``) is set."""
    missing = sorted(_missing(OmegaConf.to_container(cfg, resolve=False)))  # resolving needs no Hydra run
    if missing:
        key = missing[0]
        raise ConfigError(f"{key} is required but not set: add {_REQUIRED_HINTS.get(key, key + '=<value>')}")


def check_output_root(root: Any) -> str:
    """``paths.output_root`` is set (``null`` or empty would make ``None/...`` or ``/...`` run folders)."""
    if not isinstance(root, str) or not root.strip():
        raise ConfigError(
            f"paths.output_root must be a folder, got {root!r}: set paths.output_root=<folder> (default: outputs)"
        )
    return root


def check_common(cfg: DictConfig, seed_optional: bool = False) -> None:
    """What every entry point checks first: required values, the output root and ``seed``."""
    check_required(cfg)
    check_output_root(_get(cfg, "paths.output_root"))
    if "seed" in cfg:
        check_number(cfg.seed, "seed", int, optional=seed_optional)


def check_integer(cfg: DictConfig, key: str, **limits: Any) -> None:
    """Check the integer setting ``key`` (if present) and store it as an int: ``8.0`` works, ``8.5`` does not."""
    if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
        return
    value = check_number(_get(cfg, key), key, int, **limits)
    if value is not None:
        OmegaConf.update(cfg, key, value)


def check_sampler(
    node: DictConfig, num_timesteps: int, key: str = "sampler", process: DiffusionProcess | None = None
) -> Sampler:
    """A sampler config that builds and whose steps fit the schedule's T (and, given the ``process``, whose σ range
    meets its noise levels), built; warns about short ``fixed_large`` chains."""
    check_number(node.get("steps"), f"{key}.steps", int, low=1, high=num_timesteps, optional=True)
    sampler = build(key, node)
    if process is not None:
        check_sampler_fits(sampler, process, key)
    try:
        visited = sampler.timesteps(num_timesteps)
    except ValueError as e:
        raise ConfigError(f"{name_key(first_line(e), key)} (schedule.timesteps={num_timesteps})") from e
    if getattr(sampler, "variance", None) == "fixed_large" and len(visited) < SHORT_CHAIN:
        log.warning(
            "%s.variance=fixed_large with a %d-step chain: σ²=β_t is much worse than fixed_small on short "
            "chains (FID ≈ 46 vs ≈ 11 at 100 steps on CIFAR-10); use %s.variance=fixed_small",
            key,
            len(visited),
            key,
        )
    return sampler


def check_sampler_fits(sampler: Sampler, process: DiffusionProcess, key: str = "sampler") -> None:
    """A σ-space sampler's σ range meets the noise levels of the process it will sample (e.g. not
    ``sampler.sigma_min=100`` for a model trained up to σ = 80)."""
    if isinstance(sampler, SigmaSampler):
        try:
            sampler.sigmas(process)
        except ConfigError as e:
            raise ConfigError(name_key(first_line(e), key)) from e


def callback_samplers(cfg: DictConfig) -> dict[str, DictConfig]:
    """Every sampler a callback config carries (``callbacks.<name>.sampler``), by its config key."""
    found = {}
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and isinstance(node.get("sampler"), DictConfig):
            found[f"callbacks.{name}.sampler"] = node.sampler
    return found


def check_model_fits_data(cfg: DictConfig) -> None:
    """The network's channels and image size are the dataset's (out_channels twice that with a learned variance)."""
    channels = check_number(_get(cfg, "dataset.channels"), "dataset.channels", int, low=1)
    size = check_number(_get(cfg, "dataset.image_size"), "dataset.image_size", int, low=1)
    for key, want, name in (
        ("model.in_channels", channels, "dataset.channels"),
        ("model.out_channels", channels, "dataset.channels"),
        ("model.image_size", size, "dataset.image_size"),
    ):
        value = _get(cfg, key)
        if key == "model.out_channels" and value is not None and _get(cfg, "diffusion.variance") == "learned_range":
            if value != 2 * channels:
                raise ConfigError(
                    f"model.out_channels={value} but diffusion.variance=learned_range needs 2 x dataset.channels = "
                    f"{2 * channels}: leave model.out_channels out (it follows diffusion.variance)"
                )
            continue
        if value is not None and value != want:
            raise ConfigError(f"{key}={value} disagrees with {name}={want}: set {key}=${{{name}}} or change {name}")


def _literal_values(annotation: Any) -> list[Any]:
    """The values of a (union of) ``Literal`` type(s), e.g. Lightning's accepted precisions."""
    args = typing.get_args(annotation)
    return (
        [v for a in args for v in _literal_values(a)]
        if typing.get_origin(annotation) is not typing.Literal
        else list(args)
    )


def check_trainer_fits_machine(cfg: DictConfig) -> None:
    """A precision and accelerator Lightning knows, and no more devices than this machine has."""
    precisions = [str(p) for p in _literal_values(_PRECISION_INPUT)]
    precision = str(_get(cfg, "trainer.precision"))
    if precision not in precisions:
        raise ConfigError(f"trainer.precision={precision} is unknown: use one of {', '.join(precisions)}")
    accelerators = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
    accelerator = str(_get(cfg, "trainer.accelerator") or "auto")
    if accelerator not in accelerators:
        raise ConfigError(f"trainer.accelerator={accelerator} is unknown: use one of {', '.join(accelerators)}")
    devices = _get(cfg, "trainer.devices")
    if accelerator not in ("auto", "gpu", "cpu") and not _accelerator_present(accelerator):
        raise ConfigError(
            f"trainer.accelerator={accelerator} is not present on this machine: use trainer=cpu, trainer=gpu "
            "(CUDA) or trainer.accelerator=auto"
        )
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    available = torch.cuda.device_count() if gpu else (os.cpu_count() or 1)
    kind = "GPUs" if gpu else "CPU cores (Lightning starts one process per CPU device)"
    if gpu and available == 0:
        raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no GPU: use trainer=cpu")
    if devices in (None, "auto", -1, "-1"):
        return
    if isinstance(devices, str):
        wanted = (
            len([d for d in devices.split(",") if d.strip()])
            if "," in devices
            else (int(devices) if devices.isdigit() else None)
        )
    elif isinstance(devices, int) and not isinstance(devices, bool):
        wanted = devices
    else:
        wanted = len(devices) if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)) else None
    if wanted is None or wanted < 1:
        raise ConfigError(
            f"trainer.devices must be a positive number, a list of device ids, -1 or auto, got {devices!r}"
        )
    if wanted > available:
        raise ConfigError(
            f"trainer.devices={devices} but this machine has {available} {kind}: use trainer.devices<={available} or -1"
        )


def _accelerator_present(name: str) -> bool:
    """Whether Lightning's accelerator ``name`` (``cuda``, ``mps``, ``tpu``, ...) can run on this machine."""
    try:
        return bool(AcceleratorRegistry[name]["accelerator"].is_available())
    except Exception:  # its package is missing or broken: not present
        return False


def check_optimizer(cfg: DictConfig) -> None:
    """``optimizer.*`` within the ranges torch accepts, named by key (torch's own messages name none, and come
    only once training has started): lr > 0, weight_decay >= 0, eps > 0, betas two numbers in [0, 1), momentum
    in [0, 1]."""
    check_number(_get(cfg, "optimizer.lr"), "optimizer.lr", float, low=0, low_open=True)
    node = cfg.get("optimizer")
    if not isinstance(node, DictConfig):
        return
    if "weight_decay" in node:
        check_number(node.weight_decay, "optimizer.weight_decay", float, low=0)
    if "eps" in node:
        check_number(node.eps, "optimizer.eps", float, low=0, low_open=True)
    if "momentum" in node:
        check_number(node.momentum, "optimizer.momentum", float, low=0, high=1)
    if "betas" in node:
        betas = node.betas
        if not OmegaConf.is_list(betas) or len(betas) != 2:
            raise ConfigError(
                f"optimizer.betas must be a list of two numbers, got {betas!r}: set optimizer.betas=[0.9,0.999]"
            )
        for i, beta in enumerate(betas):
            check_number(beta, f"optimizer.betas[{i}]", float, low=0, high=1, high_open=True)


def check_trainer_values(cfg: DictConfig) -> None:
    """The Lightning Trainer and ModelCheckpoint settings our configs expose: types and ranges, naming the key.

    Lightning accepts some of these silently (an interval of 0, a negative clip value) or fails only once
    training has started; integral floats (``trainer.max_steps=6.0``) are stored back as integers.
    """
    check_integer(cfg, "trainer.max_steps", low=-1)
    check_integer(cfg, "trainer.max_epochs", low=-1, optional=True)
    check_integer(cfg, "trainer.num_nodes", low=1)
    check_integer(cfg, "trainer.log_every_n_steps", low=1)
    check_integer(cfg, "trainer.num_sanity_val_steps", low=-1, optional=True)
    check_integer(cfg, "trainer.check_val_every_n_epoch", low=1, optional=True)
    check_integer(cfg, "trainer.accumulate_grad_batches", low=1)
    interval = _get(cfg, "trainer.val_check_interval")
    if not (isinstance(interval, float) and 0 < interval <= 1):  # else a fraction of an epoch (Lightning)
        try:
            check_integer(cfg, "trainer.val_check_interval", low=1, optional=True)
        except ConfigError as e:
            raise ConfigError(
                f"trainer.val_check_interval must be a number of steps >= 1 or a fraction of an epoch in (0, 1.0], "
                f"got {interval!r}"
            ) from e
    check_number(_get(cfg, "trainer.gradient_clip_val"), "trainer.gradient_clip_val", float, low=0, optional=True)
    check_flag(cfg.get("deterministic", False), "deterministic")
    for key in ("trainer.deterministic", "trainer.benchmark", "trainer.enable_model_summary"):
        if _get(cfg, key) is not None:
            check_flag(_get(cfg, key), key)
    if _get(cfg, "trainer.deterministic") and cfg.get("seed") is None:
        raise ConfigError("deterministic=true needs a seed (seed: null draws a fresh one each run): set seed=<integer>")
    if _get(cfg, "callbacks.model_checkpoint") is not None:
        check_integer(cfg, "callbacks.model_checkpoint.every_n_train_steps", low=1, optional=True)
        check_integer(cfg, "callbacks.model_checkpoint.save_top_k", low=-1)
    check_flag(cfg.get("compile", False), "compile")


def _with_defaults(model: Any) -> dict[str, Any]:
    """A model section with its constructor's defaults filled in: a key left out is the same as its default."""
    model = dict(model) if isinstance(model, dict) else {}
    builder = section_builders()["model"].get(model.get("_target_"))
    if builder is not None:
        for name, param in inspect.signature(builder).parameters.items():
            if param.default is not inspect.Parameter.empty:
                model.setdefault(name, param.default)
    return model


def check_continued_checkpoint(cfg: DictConfig) -> None:
    """``ckpt_path=``: one of ours, trained with the model this config builds (else its weights cannot load)."""
    path = checkpoint_file(cfg.ckpt_path, "ckpt_path")
    stored = checkpoint_config(read_checkpoint(path, mmap=True), path).get("model")  # today's target names
    stored, current = _with_defaults(stored), _with_defaults(OmegaConf.to_container(model_node(cfg), resolve=True))
    # dropout changes no weight: fine-tuning may set its own (converted diffusers checkpoints store theirs, 0.0)
    diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k) and k != "dropout")
    if diff == ["augment_dim"]:  # follows dataset.augment (model_node), not a model option
        raise ConfigError(
            f"ckpt_path={path} was trained with model.augment_dim={stored['augment_dim']} and this run builds "
            f"{current['augment_dim']} (it follows dataset.augment and dataset.augment_rotate): augment as it was "
            "trained, or start a new run without ckpt_path"
        )
    if diff:
        raise ConfigError(
            f"ckpt_path={path} was trained with a different model (model.{', model.'.join(diff)} differ): "
            "use the model options it was trained with, or start a new run without ckpt_path"
        )


def check_posthoc_continues(cfg: DictConfig, ckpt_path: str | os.PathLike) -> None:
    """With ``callbacks=posthoc_ema``, a run continued from ``ckpt_path`` (``resume=`` or ``ckpt_path=``) must have
    tracked the same EMA lengths from step 0: an average started midway is not a power-function EMA."""
    node = OmegaConf.select(cfg, "callbacks.posthoc_ema")
    if node is None:
        return
    ckpt = read_checkpoint(ckpt_path, mmap=True)
    callbacks = ckpt.get("callbacks") if isinstance(ckpt.get("callbacks"), dict) else {}
    state, step = callbacks.get(STATE_KEY), ckpt.get("global_step", 0)
    if not state and isinstance(step, int) and step > 0:
        raise ConfigError(
            f"callbacks.posthoc_ema is on, but {ckpt_path} (step {step}) was trained without it: post-hoc EMA must "
            "follow a run from step 0; start a new run, or leave callbacks=posthoc_ema out"
        )
    tracked = [float(v) for v in (state or {}).get("sigma_rels") or []]
    asked = [float(v) for v in node.get("sigma_rels") or []]
    if state and tracked != asked:
        raise ConfigError(
            f"callbacks.posthoc_ema.sigma_rels={asked} but {ckpt_path} tracked {tracked}: continue with the same "
            "sigma_rels (any other length is reconstructed afterwards with python -m ddpm_lab.ema)"
        )


def check_storable(cfg: DictConfig) -> None:
    """What every checkpoint of this run will store (``stored_config``) passes the allow-list its readers check
    (``sample``, ``evaluate``, ``visualize ckpt=``, ``convert``): a run whose checkpoints they would refuse is
    refused at launch, naming the key and where to register its target."""
    stored = stored_config(cfg)
    targets = {key: (stored[key].get("_target_"), builders) for key, builders in section_builders().items()}
    targets["dataset"] = (_get(cfg, "dataset._target_"), DATASET_TARGETS)
    for key, (name, allowed) in targets.items():
        if not isinstance(name, str) or name not in allowed:
            raise ConfigError(
                f"{key}._target_={name} is not registered, so sample and evaluate would refuse every checkpoint "
                f"of this run: {HOW_TO_REGISTER[key]}"
            )
    try:
        safe_stored_config(stored)
    except UnsafeConfigError as e:
        raise ConfigError(f"sample and evaluate would refuse every checkpoint of this run: {e}") from e


def pick_device(name: str) -> torch.device:
    """``device=auto`` → CUDA when present, else CPU; anything else as torch spells it, if it is there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device={name} is not a device: use device=auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible: use device=cpu or device=auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name} but this machine has {torch.cuda.device_count()} GPU(s): use device=cuda:0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name} but this machine has no Apple GPU (MPS): use device=cpu or device=auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={name} is not a device to sample on: use device=auto, cpu, cuda, cuda:N or mps")
    return device


def check_loggers(cfg: DictConfig) -> None:
    """Refuse a logger whose optional package is not installed (Lightning would fail later, less clearly)."""
    for name, node in (cfg.get("logger") or {}).items():
        row = logger_row(node)
        if row is None or row.needs is None:
            continue
        module, extra = row.needs
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"logger.{name} needs the {module} package, which is not installed: "
                f'pip install "ddpm_lab[{extra}]", or choose another logger (logger=tensorboard, logger=csv)'
            )


def check_train_config(cfg: DictConfig) -> None:
    """Every check a training run needs before it reads data or writes a file; raises on the first problem.

    ``conditioning=class`` also fills in ``model.num_classes`` and ``conditioning.class_names`` from the dataset.
    """
    check_common(cfg, seed_optional=True)  # seed: null is documented (nondeterministic)
    check_loggers(cfg)
    for key in ("ckpt_path", "resume"):
        value = cfg.get(key)
        if value is not None and not (isinstance(value, str) and value.strip()):
            shown = "is empty" if value == "" else f"must be a path, got {value!r}"
            raise ConfigError(f"{key}= {shown}: pass {key}=<path> or leave it out")
    num_timesteps = check_number(_get(cfg, "schedule.timesteps"), "schedule.timesteps", int, low=1)
    check_sampler(cfg.sampler, num_timesteps)
    for key, node in callback_samplers(cfg).items():
        check_sampler(node, num_timesteps, key)
    check_model_fits_data(cfg)
    build("dataset", cfg.dataset)
    condition_on_dataset(cfg)
    net, diffusion, sampler = build_components(cfg, device="meta", warn=False)  # constructors check their values
    check_sampler_fits(sampler, diffusion)
    for key, node in callback_samplers(cfg).items():
        check_sampler_fits(build(key, node), diffusion, key)
    check_optimizer(cfg)  # torch's messages name no key
    build_module(cfg, net, diffusion, sampler)
    check_storable(cfg)
    check_trainer_values(cfg)
    check_trainer_fits_machine(cfg)
    writable_folder(cfg.paths.output_root)
    if cfg.get("ckpt_path") and not cfg.get("resume"):
        check_continued_checkpoint(cfg)
        keep_checkpoint_classes(cfg, cfg.ckpt_path)  # fine-tuning: labels keep the meaning the weights learned
