"""Files a run folder carries (``.hydra/overrides.yaml``, ``.hydra/config.yaml``) are untrusted input: a run folder
may come from a colleague or a shared disk. ``resume=`` replays its recorded overrides and ``evaluate`` reads its
config, so both go through here before anything is composed, resolved or instantiated.

- :func:`read_yaml` refuses absurdly large files and YAML aliases (a few KB of aliases can expand to gigabytes)
  before parsing.
- :func:`check_override_form` lets through only plain ``key=value`` overrides (or ``group=option``, or
  ``group@key.group=option``): no ``+``/``++`` additions, no ``~`` deletions, no ``_target_``/``_partial_``/
  ``_args_`` or other ``_x_`` keys, no group moved to a key of another name, no sweeps, no interpolations or
  resolvers (``${...}``) anywhere in the value.
- :func:`check_known` then requires each key to exist in the config those overrides compose (group choices
  applied), and each group choice to name an existing option (each one of a list: ``logger=[tensorboard,csv]``).
- :func:`check_places` refuses a replayed key that says where the run writes (checkpoint folder and file names,
  loggers' folders, caches, ``hydra.*``) unless the user types that key now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.errors import UnsafeConfigError, first_line

# Hydra's record of a run is a few KB; anything near this is not one.
MAX_YAML_BYTES = 1 << 20
# Keys that say where a run writes. A run folder's record (untrusted: a shared folder could aim them at another
# run's checkpoints) may not move them; typed on the command line they are the user's own choice.
# - Folders (a checkpoint callback's dirpath, loggers' save_dir, caches, ``paths.*``, ``hydra.*``, which an honest
#   overrides.yaml never holds: Hydra records those elsewhere): never replayed.
# - Names inside such a folder (checkpoint file names, a logger's name/version): an honest first launch may have
#   set them (``callbacks.model_checkpoint.filename=epoch_{epoch}``), so they replay while they stay inside it (a
#   relative name without ``..``).
# ``paths.output_root`` (where a fresh run's folder goes; a resumed run stays in its own) and ``paths.data_dir``
# (where data is read) are replayed.
FOLDER_LEAVES = frozenset(
    {"dirpath", "save_dir", "default_root_dir", "cache_dir", "tracking_uri", "log_dir", "artifact_location"}
)
NAME_LEAVES = frozenset({"filename"})
LOGGER_FOLDERS = frozenset({"dir"})  # under logger.<name>.
LOGGER_NAMES = frozenset({"name", "version", "sub_dir", "prefix", "run_id", "id"})
READ_PATHS = frozenset({"output_root", "data_dir"})


def read_yaml(path: Path, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """A YAML file read from disk as plain containers, unresolved (no resolver runs).

    Refuses, before parsing, a file over ``max_bytes``; before building anything, YAML aliases (``*name``: Hydra
    never writes them, and nested aliases are how a tiny file becomes a huge config).
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise UnsafeConfigError(
            f"{path} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.1f} MB a Hydra record can be: "
            "refusing to read it (was it replaced?)"
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise UnsafeConfigError(f"{path}: refusing YAML aliases (*name), which Hydra never writes")
        return OmegaConf.to_container(OmegaConf.create(text))  # resolve=False: interpolations stay text
    except yaml.YAMLError as e:
        raise UnsafeConfigError(f"{path} is not valid YAML: {first_line(e, 200)}") from e


def read_overrides(path: Path) -> list[str]:
    """A recorded ``overrides.yaml``: a list of override strings, each checked by :func:`check_override_form`."""
    overrides = read_yaml(path)
    if overrides is None:
        return []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise UnsafeConfigError(f"{path} is not a list of overrides (key=value lines)")
    for override in overrides:
        check_override_form(override, path)
    return overrides


def _special(name: str) -> bool:
    return len(name) > 1 and name.startswith("_") and name.endswith("_")


def _check_value(value: Any, override: str, where: Path) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if _special(str(key)):
                raise UnsafeConfigError(f"{where}: refusing to replay {override!r}: it sets the instantiate key {key}")
            _check_value(item, override, where)
    elif isinstance(value, list):
        for item in value:
            _check_value(item, override, where)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise UnsafeConfigError(f"{where}: refusing to replay {override!r}: only plain values may be replayed")


def _parse(override: str, where: Path) -> Override:
    try:
        return OverridesParser.create().parse_overrides([override])[0]
    except Exception as e:  # Hydra's grammar error
        raise UnsafeConfigError(f"{where}: refusing the unparsable override {override!r}: {first_line(e, 200)}") from e


def check_override_form(override: str, where: Path) -> Override:
    """Refuse anything but a plain ``key=value`` / ``group=option`` override (see the module docstring)."""
    refuse = f"{where}: refusing to replay {override!r}"
    if "${" in override:
        raise UnsafeConfigError(f"{refuse}: interpolations and resolvers (${{...}}) are never replayed from a file")
    parsed = _parse(override, where)
    if parsed.type != OverrideType.CHANGE:
        kind = {OverrideType.DEL: "deletes a key (~)", OverrideType.ADD: "adds a key (+)"}.get(
            parsed.type, "adds a key (++)"
        )
        raise UnsafeConfigError(f"{refuse}: it {kind}; only plain key=value overrides of existing keys are replayed")
    group, package = parsed.key_or_group, parsed.package
    if package is not None and package.rsplit(".", 1)[-1] != group.rsplit("/", 1)[-1]:
        # ``features@callbacks.fid.features=tiny`` places a group's option at a key of the same name; nothing else
        raise UnsafeConfigError(f"{refuse}: it moves config group {group} to another key (@{package})")
    special = [part for part in f"{group}.{package or ''}".replace("/", ".").split(".") if _special(part)]
    if special:
        raise UnsafeConfigError(f"{refuse}: it sets the instantiate key {special[0]}")
    if parsed.is_sweep_override():
        raise UnsafeConfigError(f"{refuse}: it is a sweep; a run replays single values")
    _check_value(parsed.value(), override, where)
    return parsed


def _flat_items(key: str, value: Any) -> list[tuple[str, Any]]:
    """The dotted keys an override sets, with their values: ``a.b={c: 1, d: {e: 2}}`` sets ``a.b.c`` and
    ``a.b.d.e``."""
    if isinstance(value, Mapping) and value:
        return [kv for sub, item in value.items() for kv in _flat_items(f"{key}.{sub}", item)]
    return [(key, value)]


def override_items(override: str) -> list[tuple[str, Any]]:
    """The dotted keys a (well-formed) override sets and their values; its plain key and text when it does not
    parse."""
    try:
        parsed = OverridesParser.create().parse_overrides([override])[0]
    except Exception:  # not ours to judge here: the form check or Hydra reports it
        key, _, text = override.partition("=")
        return [(key.lstrip("+~"), text)]
    return _flat_items(parsed.key_or_group.replace("/", "."), parsed.value())


def place_kind(key: str) -> str | None:
    """``"folder"`` when the dotted ``key`` says which folder a run writes into, ``"name"`` when it names a file or
    folder inside one, else None (see :data:`FOLDER_LEAVES`)."""
    parts = key.split(".")
    if parts[0] == "hydra" or (parts[0] == "paths" and len(parts) > 1 and parts[1] not in READ_PATHS):
        return "folder"
    logger = parts[0] == "logger" and len(parts) > 2
    if parts[-1] in FOLDER_LEAVES or (logger and parts[-1] in LOGGER_FOLDERS):
        return "folder"
    if parts[-1] in NAME_LEAVES or (logger and parts[-1] in LOGGER_NAMES):
        return "name"
    return None


def stays_inside(value: Any) -> bool:
    """Whether a replayed file or folder name keeps to the folder it is named in: a number, or a relative path
    without ``..``, ``~`` or backslashes (null keeps the default)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return True
    if not isinstance(value, str) or not value or "\\" in value or value.startswith(("/", "~")):
        return False
    return ".." not in Path(value).parts


def check_places(overrides: Sequence[str], sources: Mapping[str, Path], typed: Sequence[str] = ()) -> None:
    """Refuse a replayed override that would move where the run writes (:func:`place_kind`: a folder, or a name
    that leaves its folder), unless the same key is typed now (``typed``: the command line's overrides, applied
    after the replayed ones)."""
    chosen = {key for override in typed for key, _ in override_items(override)}
    for override in overrides:
        for key, value in override_items(override):
            kind = place_kind(key)
            if kind is None or key in chosen or (kind == "name" and stays_inside(value)):
                continue
            what = "says where the run writes" if kind == "folder" else "leaves the folder it names a file in"
            raise UnsafeConfigError(
                f"{sources[override]}: refusing to replay {override!r}: {key} {what} "
                "(checkpoints, logs, caches), which a run folder's record may not change; "
                f"type {key}=<value> on the command line to choose it yourself"
            )


def _has_key(cfg: DictConfig, dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():  # keys(): `in` is False for ??? values
            return False
        node = node._get_node(part)
    return True


def check_known(overrides: Sequence[str], sources: Mapping[str, Path], config_name: str) -> None:
    """Refuse an override whose key the composed ``config_name`` lacks, or a group choice that names no option.

    ``sources`` maps each override to the file it came from (named in the message). Needs Hydra initialised
    (``@hydra.main`` or ``initialize_config_dir``); group choices are composed first, as Hydra would.
    """
    loader = GlobalHydra.instance().config_loader()
    groups, keys = [], []
    for override in overrides:
        parsed = check_override_form(override, sources[override])
        name = parsed.key_or_group
        options = [] if "." in name else loader.get_group_options(name)
        if not options:
            keys.append((override, name))
            continue
        value = parsed.value()
        for choice in value if isinstance(value, list) else [value]:  # logger=[tensorboard,csv]: each an option
            if choice is not None and choice not in options:
                raise UnsafeConfigError(
                    f"{sources[override]}: refusing to replay {override!r}: {name} has no option {choice!r} "
                    f"(options: {', '.join(options)})"
                )
        groups.append(override)
        if parsed.package is not None:  # the key it fills must exist, as for key=value
            keys.append((override, parsed.package))
    if not keys:
        return
    try:
        composed = compose(config_name=config_name, overrides=groups)
    except Exception as e:  # Hydra's composition error: a group choice that does not fit the others
        files = ", ".join(sorted({str(sources[g]) for g in groups}))
        raise UnsafeConfigError(
            f"{files}: the recorded group choices {' '.join(groups)} cannot be replayed: {first_line(e, 300)}"
        ) from e
    for override, key in keys:
        if not _has_key(composed, key):
            raise UnsafeConfigError(
                f"{sources[override]}: refusing to replay {override!r}: the config has no key {key} "
                "(only plain key=value overrides of existing keys are replayed)"
            )
