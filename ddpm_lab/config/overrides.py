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
# Keys that say where a run writes: a checkpoint callback's folder and file names, a logger's folders, caches,
# Hydra's own folders (``hydra.*`` never appears in an honest overrides.yaml: Hydra records those elsewhere). A run
# folder's record may not move them (a shared folder could aim them at another run's checkpoints); typed on the
# command line they are the user's own choice. ``paths.output_root`` (where a fresh run's folder goes; a resumed
# run stays in its own) and ``paths.data_dir`` (where data is read) are replayed.
PLACE_LEAVES = frozenset(
    {"dirpath", "filename", "save_dir", "default_root_dir", "cache_dir", "tracking_uri", "log_dir", "artifact_location"}
)
LOGGER_PLACES = frozenset({"name", "version", "sub_dir", "prefix", "run_id", "id", "dir"})  # under logger.<name>.
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


def _flat_keys(key: str, value: Any) -> list[str]:
    """The dotted keys an override sets: ``a.b={c: 1, d: {e: 2}}`` sets ``a.b.c`` and ``a.b.d.e``."""
    if isinstance(value, Mapping) and value:
        return [k for sub, item in value.items() for k in _flat_keys(f"{key}.{sub}", item)]
    return [key]


def override_keys(override: str) -> list[str]:
    """The dotted keys a (well-formed) override sets; its plain key when it does not parse."""
    try:
        parsed = OverridesParser.create().parse_overrides([override])[0]
    except Exception:  # not ours to judge here: the form check or Hydra reports it
        return [override.split("=", 1)[0].lstrip("+~")]
    return _flat_keys(parsed.key_or_group.replace("/", "."), parsed.value())


def is_place(key: str) -> bool:
    """Whether the dotted ``key`` says where a run writes (see :data:`PLACE_LEAVES`)."""
    parts = key.split(".")
    if parts[0] == "hydra":
        return True
    if parts[0] == "paths":
        return len(parts) > 1 and parts[1] not in READ_PATHS
    return parts[-1] in PLACE_LEAVES or (parts[0] == "logger" and len(parts) > 2 and parts[-1] in LOGGER_PLACES)


def check_places(overrides: Sequence[str], sources: Mapping[str, Path], typed: Sequence[str] = ()) -> None:
    """Refuse a replayed override that would move where the run writes (:func:`is_place`), unless the same key is
    typed now (``typed``: the command line's overrides, applied after the replayed ones)."""
    chosen = {key for override in typed for key in override_keys(override)}
    for override in overrides:
        for key in override_keys(override):
            if is_place(key) and key not in chosen:
                raise UnsafeConfigError(
                    f"{sources[override]}: refusing to replay {override!r}: {key} says where the run writes "
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
