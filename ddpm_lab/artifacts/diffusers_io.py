"""Interop with diffusers: a ``UNet2DModel`` + ``DDPMScheduler`` folder to a ddpm_lab checkpoint, and back; EDM models
as a ``UNet2DModel`` + EDM scheduler folder (see :mod:`ddpm_lab.artifacts.diffusers_edm`).

Ho et al.'s published DDPM weights (google/ddpm-cifar10-32, -celebahq-256, -church-256, -bedroom-256, ...) are
distributed in diffusers' ``save_pretrained`` layout. :func:`read_diffusers` turns such a folder into the
stored-config sections and ``net.*`` weights of a ddpm_lab checkpoint; :func:`write_diffusers` writes a folder that
``DDPMPipeline.from_pretrained`` loads. The two U-Nets compute the same function: only parameter names differ,
plus our fused ``qkv`` 1×1 conv against diffusers' separate ``to_q``/``to_k``/``to_v`` linears.

diffusers is an optional dependency (``pip install ddpm_lab[diffusers]``): it is imported here only.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm_lab.artifacts.allow_list import build_model, target_name
from ddpm_lab.artifacts.atomic import publish_new, temp_path
from ddpm_lab.artifacts.diffusers_checks import check_scheduler_config, check_unet_config, check_weight_files, read_json
from ddpm_lab.artifacts.diffusers_edm import (
    EDM_PIPELINE,
    EDM_SCHEDULERS,
    edm_scheduler_config,
    edm_sections,
    is_edm,
)
from ddpm_lab.diffusion import DDPMSampler, GaussianDiffusion, make_betas
from ddpm_lab.diffusion.diffusers_sampler import PREDICTION_TYPES
from ddpm_lab.diffusion.samplers import VARIANCES
from ddpm_lab.errors import CheckpointError, ConfigError, OutputExistsError, UserError, first_line
from ddpm_lab.models import UNet
from ddpm_lab.models.unet import AttentionBlock, Downsample, ResBlock, Upsample

# Our names <-> diffusers' for the β schedules (the prediction types: PREDICTION_TYPES; the DDPM variances have
# the same names in both, plus diffusers' fixed_small_log).
BETA_SCHEDULES = {"linear": "linear", "quadratic": "scaled_linear", "sigmoid": "sigmoid", "cosine": "squaredcos_cap_v2"}
# diffusers' squaredcos_cap_v2 is our cosine schedule with these parameters.
DIFFUSERS_COSINE = {"s": 0.008, "max_beta": 0.999}
# Our exports say in the U-Net's config.json (a private key, which diffusers ignores) whether the last of its
# num_class_embeds rows is the null class of classifier-free guidance; another model's rows are all classes.
NULL_CLASS_KEY = "_ddpm_lab_null_class"
EXPORTED_BY = "python -m ddpm_lab.convert"  # in the model card of every folder we export


def require_diffusers() -> None:
    """Refuse (one line) when diffusers or safetensors is not installed."""
    missing = [name for name in ("diffusers", "safetensors") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"converting needs {' and '.join(missing)}, which is not installed: pip install 'ddpm_lab[diffusers]'"
        )


# --------------------------------------------------------------------------------------------- parameter names
_RESBLOCK = {"norm1": "norm1", "conv1": "conv1", "temb": "time_emb_proj", "norm2": "norm2", "conv2": "conv2"}


def _resblock_names(ours: str, theirs: str) -> Iterator[tuple[str, str]]:
    for a, b in {**_RESBLOCK, "skip": "conv_shortcut"}.items():
        yield f"{ours}.{a}", f"{theirs}.{b}"


def _attention_names(ours: str, theirs: str) -> Iterator[tuple[str, str]]:
    yield f"{ours}.norm", f"{theirs}.group_norm"
    yield f"{ours}.proj", f"{theirs}.to_out.0"
    # ``qkv`` is split into to_q/to_k/to_v by _to_diffusers_state and joined back by _from_diffusers_state


def _level_names(layers: nn.ModuleList, ours: str, theirs: str, index: dict[str, int]) -> Iterator[tuple[str, str]]:
    """Names inside one entry of ``UNet.down``/``UNet.up``; ``index`` counts resnets/attentions of the block."""
    for i, layer in enumerate(layers):
        if isinstance(layer, ResBlock):
            yield from _resblock_names(f"{ours}.{i}", f"{theirs}.resnets.{index['resnets']}")
            index["resnets"] += 1
        elif isinstance(layer, AttentionBlock):
            yield from _attention_names(f"{ours}.{i}", f"{theirs}.attentions.{index['attentions']}")
            index["attentions"] += 1
        elif isinstance(layer, Downsample):
            yield f"{ours}.{i}.conv", f"{theirs}.downsamplers.0.conv"
        elif isinstance(layer, Upsample):
            yield f"{ours}.{i}.conv", f"{theirs}.upsamplers.0.conv"


def module_names(net: UNet) -> dict[str, str]:
    """Our module path -> diffusers' ``UNet2DModel`` module path, for every module holding weights.

    Walks our flat ``down``/``up`` lists level by level: a level ends after its Downsample (down) or before its
    Upsample's successor (up), as diffusers' blocks do.
    """
    names = {
        "time_mlp.0": "time_embedding.linear_1",
        "time_mlp.2": "time_embedding.linear_2",
        "conv_in": "conv_in",
        "norm_out": "conv_norm_out",
        "conv_out": "conv_out",
        "class_emb": "class_embedding",
    }
    for path, block in (("down", "down_blocks"), ("up", "up_blocks")):
        level, index = 0, {"resnets": 0, "attentions": 0}
        for i, layers in enumerate(getattr(net, path)):
            names.update(_level_names(layers, f"{path}.{i}", f"{block}.{level}", index))
            if isinstance(layers[0], (Downsample, Upsample)):
                level, index = level + 1, {"resnets": 0, "attentions": 0}
    names.update(_resblock_names("mid.0", "mid_block.resnets.0"))
    names.update(_attention_names("mid.1", "mid_block.attentions.0"))
    names.update(_resblock_names("mid.2", "mid_block.resnets.1"))
    return names


def _rename(name: str, names: dict[str, str]) -> str | None:
    module, _, leaf = name.rpartition(".")
    return f"{names[module]}.{leaf}" if module in names else None


def _attention_path(names: dict[str, str], qkv_module: str) -> str:
    """diffusers' path of the attention block whose fused ``qkv`` conv is ``qkv_module``."""
    return names[qkv_module[: -len("qkv")] + "norm"].rsplit(".", 1)[0]


def to_diffusers_state(net: UNet, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``state_dict`` (no ``net.`` prefix) as a ``UNet2DModel`` state dict."""
    names = module_names(net)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        module, _, leaf = name.rpartition(".")
        if module == "augment_emb":  # augmentation labels are zero when sampling: this map adds exactly nothing
            continue
        if module.endswith(".qkv"):  # (3C, C, 1, 1) conv -> three (C, C) linears, q first
            attention = _attention_path(names, module)
            for part, chunk in zip(("to_q", "to_k", "to_v"), tensor.chunk(3, dim=0)):
                out[f"{attention}.{part}.{leaf}"] = chunk.flatten(1) if leaf == "weight" else chunk.contiguous()
            continue
        renamed = _rename(name, names)
        if renamed is None:
            raise ConfigError(f"the weight {name} has no counterpart in diffusers' UNet2DModel")
        if module.endswith(".proj") and leaf == "weight":  # 1x1 conv -> linear
            tensor = tensor.reshape(tensor.shape[0], -1)
        out[renamed] = tensor.contiguous()
    return out


def from_diffusers_state(net: UNet, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``UNet2DModel`` state dict as ours (every name and shape checked against ``net``)."""
    names = module_names(net)
    out: dict[str, torch.Tensor] = {}
    for name, reference in net.state_dict().items():
        module, _, leaf = name.rpartition(".")
        if module.endswith(".qkv"):
            attention = _attention_path(names, module)
            parts = [state.get(f"{attention}.{p}.{leaf}") for p in ("to_q", "to_k", "to_v")]
            tensor = None if any(p is None for p in parts) else torch.cat(parts)
        else:
            theirs = _rename(name, names)
            tensor = state.get(theirs) if theirs else None
        if tensor is None or tensor.numel() != reference.numel():
            raise CheckpointError(f"the diffusers weights do not fit the converted U-Net (at {name})")
        out[name] = tensor.reshape(reference.shape).to(reference.dtype).contiguous()
    if len(state) != len(to_diffusers_state(net, out)):
        raise CheckpointError("the diffusers weights hold tensors the converted U-Net has no place for")
    return out


# ------------------------------------------------------------------------------------------------ U-Net config
_UNSUPPORTED_IF = {  # UNet2DModel options ddpm_lab's U-Net has no counterpart for, and the value it needs
    "time_embedding_type": "positional",
    "center_input_sample": False,
    "act_fn": "silu",
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
}


def unet_kwargs_from_diffusers(config: dict[str, Any], where: str, null_row: bool = False) -> dict[str, Any]:
    """Our ``UNet`` keyword arguments for a ``UNet2DModel`` config; one ConfigError naming what has no counterpart.

    ``null_row``: the last of ``num_class_embeds`` rows is a null class (see :func:`has_null_row`); else every row
    is a class and the model has no null class (``null_class=False``: no guidance, no unconditional samples).
    """
    kind = config.get("_class_name", "UNet2DModel")
    if kind != "UNet2DModel":
        raise ConfigError(
            f"{where} holds a {kind}: only diffusers' UNet2DModel (unconditional or with num_class_embeds) converts"
        )
    unsupported = [
        f"{key}={config[key]!r}" for key, needed in _UNSUPPORTED_IF.items() if key in config and config[key] != needed
    ]
    channels = list(config.get("block_out_channels", (224, 448, 672, 896)))
    down = list(config.get("down_block_types", ("DownBlock2D",) + ("AttnDownBlock2D",) * 3))
    up = list(config.get("up_block_types", ("AttnUpBlock2D",) * 3 + ("UpBlock2D",)))
    unsupported += [f"block {b}" for b in down if b not in ("DownBlock2D", "AttnDownBlock2D")]
    unsupported += [f"block {b}" for b in up if b not in ("UpBlock2D", "AttnUpBlock2D")]
    base = channels[0]
    if any(c % base for c in channels):
        unsupported.append(f"block_out_channels={channels} (each a multiple of the first)")
    if [b.startswith("Attn") for b in down] != [b.startswith("Attn") for b in reversed(up)]:
        unsupported.append("attention in up blocks not mirroring the down blocks")
    if config.get("time_embedding_dim") not in (None, 4 * base):
        unsupported.append(f"time_embedding_dim={config['time_embedding_dim']}")
    groups = config.get("norm_num_groups", 32)
    if config.get("attn_norm_num_groups") not in (None, groups):
        unsupported.append(f"attn_norm_num_groups={config['attn_norm_num_groups']}")
    in_channels = config.get("in_channels", 3)
    if config.get("out_channels", 3) != in_channels:
        unsupported.append(f"out_channels={config.get('out_channels', 3)} != in_channels={in_channels}")
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)):
        size = size[0] if len(set(size)) == 1 else None
    if not isinstance(size, int):
        unsupported.append(f"sample_size={config.get('sample_size')!r} (a square size is needed)")
    widths = [c for c, b in zip(channels, down) if b.startswith("Attn")] + [channels[-1]]
    head_dim = config.get("attention_head_dim", 8)
    heads = {1} if head_dim is None else {w // head_dim for w in widths}
    if head_dim is not None and (len(heads) > 1 or any(w % head_dim for w in widths)):
        unsupported.append(f"attention_head_dim={head_dim} (a different number of heads per level)")
    kwargs: dict[str, Any] = {}
    if config.get("num_class_embeds") is not None:
        if "num_classes" not in inspect.signature(UNet).parameters:
            unsupported.append(f"num_class_embeds={config['num_class_embeds']} (class conditioning)")
        else:  # ours holds num_classes + 1 rows, the last one the null class
            rows = int(config["num_class_embeds"])
            kwargs["num_classes"] = rows - 1 if null_row else rows
            if not null_row:
                kwargs["null_class"] = False
            if kwargs["num_classes"] < 1:
                unsupported.append(f"num_class_embeds={rows} (a null class and no class)")
    if unsupported:
        raise ConfigError(f"{where}: ddpm_lab's U-Net has no counterpart for {', '.join(unsupported)}")
    return {
        "in_channels": in_channels,
        "image_size": size,
        "base_channels": base,
        "channel_mults": [c // base for c in channels],
        "num_res_blocks": config.get("layers_per_block", 2),
        "attention_resolutions": [size // 2**i for i, b in enumerate(down) if b.startswith("Attn")],
        "dropout": float(config.get("dropout", 0.0)),
        "num_heads": heads.pop(),
        "groups": groups,
        **kwargs,
        "norm_eps": float(config.get("norm_eps", 1e-5)),
        "time_freq_shift": config.get("freq_shift", 0),
        "time_cos_first": bool(config.get("flip_sin_to_cos", True)),
        "downsample_padding": config.get("downsample_padding", 1),
    }


def unet_options(model: dict[str, Any]) -> dict[str, Any]:
    """Every constructor argument of a stored ``model`` section, defaults filled in."""
    params = inspect.signature(UNet).parameters
    return {name: model.get(name, p.default) for name, p in params.items()}


def diffusers_unet_config(model: dict[str, Any]) -> dict[str, Any]:
    """The ``UNet2DModel`` config of a stored ``model`` section; one ConfigError when diffusers cannot express it."""
    o = unet_options(model)
    base, mults, size = o["base_channels"], list(o["channel_mults"]), o["image_size"]
    widths = [base * m for m in mults]
    attention = [size // 2**i in o["attention_resolutions"] for i in range(len(mults))]
    problems = []
    if any(w % o["groups"] for w in widths):
        problems.append(f"model.groups={o['groups']} does not divide every width {widths} (diffusers needs it)")
    out_channels = o["out_channels"] or o["in_channels"]
    if out_channels != o["in_channels"]:
        problems.append(f"model.out_channels={out_channels} differs from in_channels (learned variance)")
    attention_widths = {w for w, a in zip(widths, attention) if a} | {widths[-1]}
    if o["num_heads"] > 1 and len(attention_widths) > 1:
        problems.append(f"model.num_heads={o['num_heads']} over attention widths {sorted(attention_widths)}")
    if problems:
        raise ConfigError(f"diffusers' UNet2DModel cannot express this U-Net: {'; '.join(problems)}")
    config: dict[str, Any] = {
        "sample_size": size,
        "in_channels": o["in_channels"],
        "out_channels": out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "freq_shift": o["time_freq_shift"],
        "flip_sin_to_cos": bool(o["time_cos_first"]),
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": widths,
        "layers_per_block": o["num_res_blocks"],
        "mid_block_scale_factor": 1,
        "downsample_padding": o["downsample_padding"],
        "dropout": o["dropout"],
        "act_fn": "silu",
        "attention_head_dim": None if o["num_heads"] == 1 else widths[-1] // o["num_heads"],
        "norm_num_groups": o["groups"],
        "norm_eps": o["norm_eps"],
    }
    num_classes = int(model.get("num_classes") or 0)
    if num_classes:  # class-conditional (ours: num_classes + 1 rows, the last the null class)
        config["num_class_embeds"] = num_classes + int(bool(o["null_class"]))
    return config


def has_null_row(config: dict[str, Any], folders: list[Path]) -> bool:
    """Whether the last class row of a ``UNet2DModel`` config is a null class: what our export marked
    (:data:`NULL_CLASS_KEY`), else whether a model card in ``folders`` says ddpm_lab exported it (exports from
    before the mark); a model from anywhere else has classes only."""
    marked = config.get(NULL_CLASS_KEY)
    if isinstance(marked, bool):
        return marked
    for card in (folder / "README.md" for folder in folders):
        if card.is_file() and card.stat().st_size < 1 << 20 and EXPORTED_BY in card.read_text(errors="replace"):
            return True
    return False


def mark_null_class(unet_dir: Path, model: dict[str, Any]) -> None:
    """Write :data:`NULL_CLASS_KEY` into an exported class-conditional U-Net's ``config.json``."""
    if not int(model.get("num_classes") or 0):
        return
    path = unet_dir / "config.json"
    config = json.loads(path.read_text())
    config[NULL_CLASS_KEY] = bool(unet_options(model)["null_class"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------- scheduler config
def schedule_sections(scheduler: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """The stored ``schedule``, ``diffusion`` and ``sampler`` sections for a ``DDPMScheduler`` config."""
    problems = []
    name = {v: k for k, v in BETA_SCHEDULES.items()}.get(scheduler["beta_schedule"])
    if scheduler.get("trained_betas") is not None or name is None:
        problems.append(f"beta_schedule={scheduler['beta_schedule']!r} / trained_betas")
    prediction = {v: k for k, v in PREDICTION_TYPES.items()}.get(scheduler["prediction_type"])
    if prediction is None:
        problems.append(f"prediction_type={scheduler['prediction_type']!r}")
    variance = {"fixed_small_log": "fixed_small"}.get(scheduler["variance_type"], scheduler["variance_type"])
    if variance not in VARIANCES:
        problems.append(f"variance_type={scheduler['variance_type']!r}")
    if scheduler.get("thresholding"):
        problems.append("thresholding=true")
    if scheduler.get("clip_sample") and scheduler.get("clip_sample_range", 1.0) != 1.0:
        problems.append(f"clip_sample_range={scheduler['clip_sample_range']}")
    if problems:
        raise ConfigError(f"{where}: ddpm_lab has no counterpart for {', '.join(problems)}")
    schedule: dict[str, Any] = {"_target_": target_name(make_betas), "name": name}
    schedule["timesteps"] = int(scheduler["num_train_timesteps"])
    if name == "cosine":
        schedule.update(DIFFUSERS_COSINE)
    else:
        schedule.update(beta_start=float(scheduler["beta_start"]), beta_end=float(scheduler["beta_end"]))
    schedule["zero_terminal_snr"] = bool(scheduler.get("rescale_betas_zero_snr", False))
    return {
        "schedule": schedule,
        "diffusion": {
            "_target_": target_name(GaussianDiffusion),
            "prediction": prediction,
            "loss_weighting": "uniform",
            "min_snr_gamma": 5.0,
        },
        "sampler": {
            "_target_": target_name(DDPMSampler),
            "variance": variance,
            "clip_denoised": bool(scheduler.get("clip_sample", True)),
            "dynamic_threshold": None,
            "steps": None,
            "spacing": "linspace",
        },
    }


def diffusers_scheduler_config(config: dict[str, Any]) -> dict[str, Any]:
    """The ``DDPMScheduler`` config of a stored config: its schedule, prediction and (DDPM sampler's) variance."""
    schedule, sampler = config["schedule"], config.get("sampler") or {}
    name = schedule.get("name")
    if name not in BETA_SCHEDULES or (
        name == "cosine" and any(schedule.get(k, v) != v for k, v in DIFFUSERS_COSINE.items())
    ):
        raise ConfigError(
            f"diffusers' DDPMScheduler has no schedule like {name} {schedule}: "
            f"export a model trained with one of {sorted(BETA_SCHEDULES)} (cosine with s=0.008, max_beta=0.999)"
        )
    is_ddpm = str(sampler.get("_target_", "")).endswith("DDPMSampler")
    out: dict[str, Any] = {
        "num_train_timesteps": int(schedule.get("timesteps", 1000)),
        "beta_schedule": BETA_SCHEDULES[name],
        "beta_start": float(schedule.get("beta_start", 1e-4)),
        "beta_end": float(schedule.get("beta_end", 0.02)),
        "trained_betas": None,
        "variance_type": sampler.get("variance", "fixed_small") if is_ddpm else "fixed_small",
        "clip_sample": bool(sampler.get("clip_denoised", True)),
        "clip_sample_range": 1.0,
        "prediction_type": PREDICTION_TYPES[config["diffusion"].get("prediction", "eps")],
        "thresholding": False,
        "rescale_betas_zero_snr": bool(schedule.get("zero_terminal_snr", False)),
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }
    return out


# ------------------------------------------------------------------------------------------------------ import
def locate_components(folder: Path, key: str = "from_diffusers") -> tuple[Path, Path]:
    """(U-Net folder, scheduler folder) of a pipeline folder (``model_index.json``) or a ``UNet2DModel`` folder.

    A pipeline component lives in its subfolder, or in the pipeline folder itself (the flat layout of the
    google/ddpm-* repositories). A U-Net folder's scheduler sits beside its ``config.json`` or in ``scheduler/``
    next to or above it.
    """
    if not folder.is_dir():
        raise ConfigError(f"{key}={folder} is not a folder: pass a folder saved with diffusers' save_pretrained")
    if (folder / "model_index.json").is_file():
        index = read_json(folder / "model_index.json")
        components = {k: v for k, v in index.items() if isinstance(v, list) and len(v) == 2}
        unet = [k for k, v in components.items() if v[1] in ("UNet2DModel", "UNet2DConditionModel")] or ["unet"]
        kind = components.get(unet[0], [None, "no U-Net"])[1]
        if kind != "UNet2DModel":
            raise ConfigError(
                f"{key}={folder} is a {index.get('_class_name')} with a {kind}: only pipelines of a UNet2DModel "
                "(with a DDPMScheduler, or an EDM scheduler) convert"
            )
        scheduler = [k for k, v in components.items() if str(v[1]).endswith("Scheduler")] or ["scheduler"]
        pick = lambda name, marker: folder / name if (folder / name / marker).is_file() else folder
        return pick(unet[0], "config.json"), pick(scheduler[0], "scheduler_config.json")
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{key}={folder} holds neither model_index.json nor config.json: pass the folder diffusers' "
            "save_pretrained wrote (e.g. a huggingface-cli download of google/ddpm-cifar10-32)"
        )
    for candidate in (folder, folder / "scheduler", folder.parent / "scheduler"):
        if (candidate / "scheduler_config.json").is_file():
            return folder, candidate
    raise ConfigError(
        f"{key}={folder} has no scheduler_config.json (beside config.json or in scheduler/): "
        "the schedule and prediction type come from it; save the DDPMScheduler with the model"
    )


def read_diffusers(folder: str | os.PathLike, key: str = "from_diffusers") -> tuple[dict[str, Any], dict[str, Any]]:
    """(stored-config sections, our ``net`` state dict) of a diffusers DDPM folder.

    Every JSON field is checked first, and the weights' sizes from their headers (``diffusers_checks.py``); the
    weights are then read by diffusers itself: safetensors where the folder has them, a ``.bin`` through
    ``torch.load(weights_only=True)`` (no code runs), old attention names renamed.
    """
    require_diffusers()
    unet_dir, scheduler_dir = locate_components(Path(folder).expanduser(), key)
    unet_config = read_json(unet_dir / "config.json")
    check_unet_config(unet_config, unet_dir / "config.json")
    null_row = has_null_row(unet_config, [Path(folder).expanduser(), unet_dir.parent])
    model = {"_target_": target_name(UNet), **unet_kwargs_from_diffusers(unet_config, key, null_row)}
    raw_scheduler = read_json(scheduler_dir / "scheduler_config.json")
    check_scheduler_config(raw_scheduler, scheduler_dir / "scheduler_config.json")
    kind = raw_scheduler.get("_class_name", "DDPMScheduler")
    if kind not in ("DDPMScheduler", "DDIMScheduler", *EDM_SCHEDULERS):
        raise ConfigError(
            f"{key}={folder}: its scheduler is a {kind}, not a DDPMScheduler (or {' or '.join(EDM_SCHEDULERS)})"
        )
    import diffusers  # only now: importing diffusers takes seconds
    from diffusers import UNet2DModel

    if kind in EDM_SCHEDULERS:  # an EDM model: its σ range, σ_data and sampler
        scheduler = dict(getattr(diffusers, kind).from_config(raw_scheduler).config)
        sections = {"model": model, **edm_sections(kind, scheduler, key)}
    else:
        scheduler = dict(diffusers.DDPMScheduler.from_config(raw_scheduler).config)
        sections = {"model": model, **schedule_sections(scheduler, key)}
    try:
        with torch.device("meta"):
            net = build_model(sections)
        check_weight_files(unet_dir, sum(t.numel() for t in net.state_dict().values()))  # before reading them
        unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)  # no accelerate needed
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError) as e:  # no weights file, or weights not fitting its config
        raise CheckpointError(f"cannot load the U-Net weights in {unet_dir}: {first_line(e, 300)}") from e
    return sections, from_diffusers_state(net, unet.state_dict())


# ------------------------------------------------------------------------------------------------------ export
def model_card(
    config: dict[str, Any], global_step: int, scheduler: dict[str, Any], fid: float | None, scheduler_name: str = ""
) -> str:
    """README.md of an exported folder: what the model is and how it was trained."""
    dataset = config.get("dataset") or {}
    model = unet_options(config["model"])
    schedule = config["schedule"]
    name = str(dataset.get("name") or "unknown").removesuffix("DataModule")
    if scheduler_name in EDM_SCHEDULERS:
        kind, process = (
            "EDM",
            [
                f"- EDM (Karras et al., 2022): σ_data={scheduler['sigma_data']}, σ in [{scheduler['sigma_min']}, "
                f"{scheduler['sigma_max']}] on the ρ={scheduler['rho']} Karras ramp; scheduler: {scheduler_name}",
            ],
        )
        usage = [
            "from diffusers import DiffusionPipeline  # a ConsistencyModelPipeline: EDM's loop with the EDM scheduler",
            'images = DiffusionPipeline.from_pretrained("<this folder>")(batch_size=16, num_inference_steps=25).images',
        ]
    else:
        kind = "DDPM"
        process = [
            f"- schedule: {schedule.get('name')} ({scheduler['beta_schedule']}), T={scheduler['num_train_timesteps']}"
            + (", zero terminal SNR" if scheduler["rescale_betas_zero_snr"] else ""),
            f"- prediction: {scheduler['prediction_type']}, variance: {scheduler['variance_type']}",
        ]
        usage = [
            "from diffusers import DDPMPipeline",
            'images = DDPMPipeline.from_pretrained("<this folder>")(batch_size=16).images',
        ]
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: unconditional-image-generation",
        f"tags: [{kind.lower()}, ddpm_lab]",
        "---",
        f"# {kind} trained with ddpm_lab on {name}",
        "",
        f"- dataset: {name}, {dataset.get('image_size', model['image_size'])} px, "
        f"{dataset.get('channels', model['in_channels'])} channel(s)",
        f"- training steps: {global_step}",
        *process,
        f"- U-Net: {model['base_channels']} base channels x {list(model['channel_mults'])}, "
        f"{model['num_res_blocks']} blocks per level, attention at {list(model['attention_resolutions'])} px",
        f"- FID: {fid if fid is not None else 'not measured'}",
        "",
        "```python",
        *usage,
        "```",
        "",
        f"Exported with `{EXPORTED_BY} ckpt=... to_diffusers=...`.",
        "",
    ]
    return "\n".join(lines)


def write_diffusers(
    folder: str | os.PathLike,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    global_step: int,
    fid: float | None = None,
) -> Path:
    """Write a pipeline folder (unet/, scheduler/, model_index.json, README.md), complete or not at all: a
    ``DDPMPipeline``, or for an EDM model a ``ConsistencyModelPipeline`` with its EDM scheduler.

    Built and saved by diffusers itself (so ``DiffusionPipeline.from_pretrained`` reads it), in a hidden sibling
    folder renamed into place at the end, which fails (OutputExistsError) unless ``folder`` is still missing or
    empty then: checked before any work too.
    """
    require_diffusers()
    import diffusers

    folder = Path(folder).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OutputExistsError(f"to_diffusers={folder} already exists and is not empty: pass a new folder")
    unet_config = diffusers_unet_config(config["model"])
    if is_edm(config):
        scheduler_name, scheduler_config = edm_scheduler_config(config)
        pipeline_class = getattr(diffusers, EDM_PIPELINE)
    else:
        scheduler_name, scheduler_config = "DDPMScheduler", diffusers_scheduler_config(config)
        pipeline_class = diffusers.DDPMPipeline
    with torch.device("meta"):
        net = build_model(config)
    theirs = to_diffusers_state(net, state)
    unet = diffusers.UNet2DModel(**unet_config)
    unet.load_state_dict(theirs, strict=True)
    pipeline = pipeline_class(unet=unet, scheduler=getattr(diffusers, scheduler_name)(**scheduler_config))
    tmp = temp_path(folder)
    try:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        mark_null_class(tmp / "unet", config["model"])
        (tmp / "README.md").write_text(model_card(config, global_step, scheduler_config, fid, scheduler_name))
        publish_new(tmp, folder)  # in one step, and only onto nothing or an empty folder: never over another export
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
