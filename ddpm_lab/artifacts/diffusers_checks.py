"""A diffusers folder is untrusted input (a download, a shared disk): its JSON files and weights are checked here
before anything is built from them or read whole.

- :func:`read_json`: a ``config.json`` / ``scheduler_config.json`` / ``model_index.json`` of at most 1 MB, a JSON
  object, checked for size before it is read.
- :func:`check_unet_config` and :func:`check_scheduler_config`: every field ddpm_lab reads, by type and range
  (zero or non-integer sizes, absurd widths, strings where numbers belong), one line naming the file and the field.
- :func:`check_weight_files`: the weights' sizes from the file system and the files' own headers (safetensors'
  JSON header, a ``.bin``'s zip directory), against what the config's network can hold, before diffusers reads them.

``read_diffusers`` (``diffusers_io.py``) runs all of them; each also works on its own, e.g. on a freshly downloaded
folder.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from pathlib import Path
from typing import Any

from ddpm_lab.errors import CheckpointError, ConfigError, first_line

MAX_JSON_BYTES = 1 << 20  # diffusers' configs are a few KB
MAX_WIDTH = 8192  # channels of one U-Net level (the published DDPMs: at most 512)
MAX_LEVELS = 8
MAX_IMAGE_SIZE = 4096
MAX_CHANNELS = 64
MAX_LAYERS = 16
MAX_TIMESTEPS = 100_000
MAX_CLASS_EMBEDS = 100_001
# Bytes a weights file may hold per parameter of the network its config builds (float64), plus the file format's
# own overhead (names, headers, pickle).
BYTES_PER_PARAMETER = 8
FORMAT_OVERHEAD = 16 << 20
MAX_HEADER_BYTES = 100 << 20  # safetensors refuses larger headers itself
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
WEIGHT_PREFIX = "diffusion_pytorch_model"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON object from ``path``, refused (CheckpointError) when over ``max_bytes`` (checked before reading),
    unreadable, nested absurdly deep, or not an object."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise CheckpointError(
                f"{path} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.1f} MB a diffusers config can be: "
                "refusing to read it"
            )
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"cannot read {path}: {first_line(e, 200)}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _integer(config: dict[str, Any], key: str, where: Path, low: int, high: int, default: Any = None) -> Any:
    value = config.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: {key}={_shown(value)} must be an integer in [{low}, {high}]")
    return value


def _number(config: dict[str, Any], key: str, where: Path, low: float, high: float, open_low: bool = False) -> None:
    value = config.get(key)
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (low < value if open_low else low <= value) or value > high:
        bound = f"{'(' if open_low else '['}{low}, {high}]"
        raise ConfigError(f"{where}: {key}={_shown(value)} must be a number in {bound}")


def _kind(config: dict[str, Any], key: str, where: Path, kind: type | tuple[type, ...], text: str) -> None:
    value = config.get(key)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise ConfigError(f"{where}: {key}={_shown(value)} must be {text}")


def _names(config: dict[str, Any], key: str, where: Path, length: int) -> None:
    value = config.get(key)
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 100 for v in value):
        raise ConfigError(f"{where}: {key}={_shown(value)} must be a list of block names")
    if len(value) != length:
        raise ConfigError(f"{where}: {key} names {len(value)} blocks, but block_out_channels has {length} levels")


def check_unet_config(config: dict[str, Any], where: Path) -> None:
    """Every field of a ``UNet2DModel`` ``config.json`` that ddpm_lab reads: types and ranges (ConfigError naming
    the file and field), before anything is built from it. Another class than ``UNet2DModel`` and a missing
    ``sample_size`` are left to ``unet_kwargs_from_diffusers``, which names them with every other unsupported option.
    """
    _kind(config, "_class_name", where, str, "a name")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        return
    for key in ("_class_name", "time_embedding_type", "act_fn", "mid_block_type", "downsample_type", "upsample_type"):
        _kind(config, key, where, str, "a name")
    _kind(config, "resnet_time_scale_shift", where, str, "a name")
    _kind(config, "class_embed_type", where, str, "a name or null")
    for key in ("center_input_sample", "flip_sin_to_cos", "add_attention"):
        _kind(config, key, where, bool, "true or false")
    widths = config.get("block_out_channels", [224, 448, 672, 896])
    if (
        not isinstance(widths, list)
        or not 1 <= len(widths) <= MAX_LEVELS
        or not all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_WIDTH for w in widths)
    ):
        raise ConfigError(
            f"{where}: block_out_channels={_shown(widths)} must be a list of 1 to {MAX_LEVELS} integers "
            f"in [1, {MAX_WIDTH}]"
        )
    _names(config, "down_block_types", where, len(widths))
    _names(config, "up_block_types", where, len(widths))
    for key in ("in_channels", "out_channels"):
        _integer(config, key, where, 1, MAX_CHANNELS, default=3)
    _integer(config, "layers_per_block", where, 1, MAX_LAYERS, default=2)
    groups = _integer(config, "norm_num_groups", where, 1, MAX_WIDTH, default=32)
    if any(w % groups for w in widths):
        raise ConfigError(f"{where}: norm_num_groups={groups} does not divide every width of {widths}")
    for key in ("attn_norm_num_groups", "time_embedding_dim", "attention_head_dim"):
        if config.get(key) is not None:
            _integer(config, key, where, 1, 4 * MAX_WIDTH)
    if config.get("num_class_embeds") is not None:
        _integer(config, "num_class_embeds", where, 1, MAX_CLASS_EMBEDS)
    _integer(config, "downsample_padding", where, 0, 1, default=1)
    _integer(config, "freq_shift", where, 0, 100, default=0)
    _number(config, "mid_block_scale_factor", where, 0, 1e3, open_low=True)
    _number(config, "dropout", where, 0, 1)
    if config.get("dropout") == 1:
        raise ConfigError(f"{where}: dropout=1 must be below 1")
    _number(config, "norm_eps", where, 0, 1, open_low=True)
    size = config.get("sample_size")
    if size is None:
        return
    sizes = size if isinstance(size, list) else [size]
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_IMAGE_SIZE for s in sizes):
        raise ConfigError(f"{where}: sample_size={_shown(size)} must be an integer in [1, {MAX_IMAGE_SIZE}]")
    halvings = 2 ** (len(widths) - 1)
    if any(s % halvings for s in sizes):
        raise ConfigError(
            f"{where}: sample_size={size} cannot be halved {len(widths) - 1} times (one per level after the first)"
        )


def check_scheduler_config(config: dict[str, Any], where: Path) -> None:
    """Every field of a ``scheduler_config.json`` that ddpm_lab reads: types and ranges, before a scheduler is
    built from it (diffusers takes a string ``num_train_timesteps`` and fails later, less clearly)."""
    for key in ("_class_name", "beta_schedule", "variance_type", "prediction_type", "timestep_spacing"):
        _kind(config, key, where, str, "a name")
    for key in ("clip_sample", "thresholding", "rescale_betas_zero_snr"):
        _kind(config, key, where, bool, "true or false")
    if "num_train_timesteps" in config:
        _integer(config, "num_train_timesteps", where, 1, MAX_TIMESTEPS)
    if "steps_offset" in config:
        _integer(config, "steps_offset", where, 0, MAX_TIMESTEPS)
    for key in ("beta_start", "beta_end"):
        _number(config, key, where, 0, 1, open_low=True)
    start, end = config.get("beta_start", 1e-4), config.get("beta_end", 0.02)
    if config.get("beta_schedule", "linear") != "squaredcos_cap_v2" and not start < end:
        raise ConfigError(f"{where}: beta_start={start} must be below beta_end={end}")
    _number(config, "clip_sample_range", where, 0, 1e3, open_low=True)
    _kind(config, "trained_betas", where, list, "a list or null")


def weight_files(folder: Path) -> list[Path]:
    """The weights files diffusers may load from a ``UNet2DModel`` folder (shards and variants included)."""
    return sorted(
        p for p in folder.glob(f"{WEIGHT_PREFIX}*") if p.suffix in (".safetensors", ".bin") and not p.is_dir()
    )


def _safetensors_bytes(path: Path, size: int) -> int:
    """The tensor bytes a safetensors file's header declares, every entry checked against the file's size."""
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{path} is not a safetensors file (its header length {length} does not fit)")
        try:
            header = json.loads(f.read(length))
        except (ValueError, RecursionError) as e:
            raise CheckpointError(f"{path} is not a safetensors file: {first_line(e, 200)}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is no JSON object)")
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dims, (begin, end) = [int(d) for d in entry["shape"]], entry["data_offsets"]
            numel = math.prod(dims) if all(d >= 0 for d in dims) else -1
            ok = 0 <= begin <= end <= size - 8 - length and end - begin == numel * DTYPE_BYTES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{path}: its header entry {_shown(name)} does not describe a tensor in the file")
        total += end - begin
    return total


def _zip_bytes(path: Path) -> int:
    """The uncompressed bytes a ``.bin`` (torch's zip format) holds, from its central directory alone."""
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {first_line(e, 200)}") from e


def check_weight_files(folder: Path, parameters: int) -> None:
    """Refuse weights that cannot belong to a network of ``parameters`` parameters, before anything reads them:
    more bytes on disk, or declared in their headers, than :data:`BYTES_PER_PARAMETER` per parameter plus
    :data:`FORMAT_OVERHEAD` (e.g. a huge zero-filled file), or a header that does not describe the file."""
    cap = parameters * BYTES_PER_PARAMETER + FORMAT_OVERHEAD
    files = weight_files(folder)
    on_disk = sum(p.stat().st_size for p in files)
    if on_disk > cap:
        raise CheckpointError(
            f"the weights in {folder} are {on_disk / 1e6:.1f} MB, more than a U-Net of {parameters:,} parameters "
            f"(its config.json) can hold ({cap / 1e6:.1f} MB): refusing to read them"
        )
    for path in files:
        declared = _safetensors_bytes(path, path.stat().st_size) if path.suffix == ".safetensors" else None
        if declared is None and zipfile.is_zipfile(path):
            declared = _zip_bytes(path)
        if declared is not None and declared > cap:
            raise CheckpointError(
                f"{path} declares {declared / 1e6:.1f} MB of tensors, more than a U-Net of {parameters:,} "
                f"parameters can hold ({cap / 1e6:.1f} MB): refusing to read it"
            )
