"""Hugging Face Hub ids where a diffusers folder is asked for: ``from_diffusers=google/ddpm-cifar10-32``.

A value that is not a path on this machine but reads ``owner/name`` is fetched with ``huggingface_hub``'s
``snapshot_download`` into the Hub's own cache (``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``), in two
steps so nothing is downloaded that the conversion does not read: the config files first (a pipeline that is not a
DDPM is refused before its weights come), then the U-Net's weights only, ``.safetensors`` where the repository has
them, else ``.bin``. Offline (``HF_HUB_OFFLINE=1``, or no network) the cached snapshot is used; a model that is not
cached is one line saying what to do. The snapshot is then read like any local folder
(:func:`~ddpm_lab.artifacts.diffusers_io.read_diffusers`: the same checks of untrusted input). A local folder always
wins over a Hub id of the same name.

huggingface_hub comes with diffusers (``pip install 'ddpm_lab[diffusers]'``); it is imported here only when used.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddpm_lab.artifacts.diffusers_io import locate_components
from ddpm_lab.errors import ConfigError, first_line

log = logging.getLogger(__name__)

# What read_diffusers reads: the pipeline index and the component configs (small), then one weights file.
CONFIG_FILES = ["model_index.json", "config.json", "scheduler_config.json", "*/config.json", "*/scheduler_config.json"]
WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # in order of preference
# owner/name as the Hub spells it (letters, digits, - _ .; huggingface_hub validates it fully)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class DiffusersSource:
    """The folder to read and where it came from (stored in the converted checkpoint)."""

    folder: Path
    origin: str  # the local folder, resolved, or owner/name@<commit> of a Hub snapshot


def looks_like_hub_id(source: str) -> bool:
    """``owner/name``: one slash, no leading ``/``, ``.``, ``~`` (a path a user would type reads differently)."""
    return bool(_HUB_ID.fullmatch(source)) and ".." not in source


def resolve_diffusers(
    source: str, revision: str | None = None, key: str = "from_diffusers", cache_dir: str | Path | None = None
) -> DiffusersSource:
    """The local folder of ``key=source``: a path that exists on this machine, else a Hub snapshot in the cache.

    ``revision`` (a branch, tag or commit of the Hub repository) is refused for a local path, where it would mean
    nothing. ``cache_dir``: the Hub cache to use (default: huggingface_hub's, ``HF_HUB_CACHE``).
    """
    path = Path(source).expanduser()
    if path.exists() or not looks_like_hub_id(source):
        if revision is not None:
            raise ConfigError(
                f"revision={revision} picks a version of a Hugging Face Hub model, but {key}={source} is a local "
                "path: drop revision= (or pass a Hub id owner/name)"
            )
        return DiffusersSource(path, str(path.resolve()))
    if importlib.util.find_spec("huggingface_hub") is None:
        raise ConfigError(
            f"{key}={source} is not a folder here; fetching it from the Hugging Face Hub needs huggingface_hub: "
            "pip install 'ddpm_lab[diffusers]'"
        )
    snapshot = _snapshot(source, revision, CONFIG_FILES, key, cache_dir)
    unet_dir, _ = locate_components(snapshot, key)  # a pipeline that is not a DDPM is refused before its weights
    folder = unet_dir.relative_to(snapshot).as_posix()
    prefix = "" if folder == "." else f"{folder}/"
    for name in WEIGHTS_FILES:  # the commit just resolved: the weights come from the same version as the configs
        if not (unet_dir / name).is_file():
            _snapshot(source, snapshot.name, [prefix + name], key, cache_dir)
        if (unet_dir / name).is_file():
            break
    log.info("%s=%s: Hugging Face Hub snapshot %s in %s", key, source, snapshot.name, snapshot.parent.parent)
    return DiffusersSource(snapshot, f"{source}@{snapshot.name}")


def _snapshot(source: str, revision: str | None, patterns: list[str], key: str, cache_dir: Any) -> Path:
    """``snapshot_download`` of the files matching ``patterns``; its errors as one line saying what to do."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{key}={source}" + (f" revision={revision}" if revision else "")
    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=patterns, cache_dir=cache_dir))
    except LocalEntryNotFoundError as e:  # offline or unreachable, and not (completely) in the cache
        offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise ConfigError(
            f"{where} is not a folder here nor in the Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}), "
            f"and {offline}: run this once with internet access (or `hf download {source}` on a machine that has "
            "it, then copy its cache here), or pass a local folder"
        ) from e
    except GatedRepoError as e:
        raise ConfigError(
            f"{where} is gated on the Hugging Face Hub: accept its terms on huggingface.co/{source} and log in "
            "(hf auth login), or pass a local folder"
        ) from e
    except RepositoryNotFoundError as e:
        raise ConfigError(
            f"{where} is neither a folder here nor a model on the Hugging Face Hub (a private one needs "
            "hf auth login): pass a folder diffusers' save_pretrained wrote, or a Hub id such as google/ddpm-cifar10-32"
        ) from e
    except RevisionNotFoundError as e:
        raise ConfigError(f"{where}: the Hub repository has no such revision: pass a branch, tag or commit") from e
    except HFValidationError as e:
        raise ConfigError(f"{where} is not a valid Hugging Face Hub id ({first_line(e, 200)})") from e
    except (HfHubHTTPError, OSError) as e:  # the Hub answered with an error, or a connection broke mid-way
        raise ConfigError(f"cannot fetch {where} from the Hugging Face Hub: {first_line(e, 300)}") from e
