"""What every entry point runs before Hydra composes its config: a mistyped key on the command line
(``trainer.max_step=5``) becomes one ``error:`` line with exit status 2 instead of Hydra's multi-line report.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from ddpm_lab.config.location import config_dir
from ddpm_lab.errors import ConfigError, user_errors


def check_typed_keys(config_name: str, argv: Sequence[str]) -> None:
    """Raise ConfigError when an override typed on the command line names a key ``config_name`` does not have.

    Composes the typed overrides once (without ``hydra.*`` ones); launches this cannot judge (multirun sweeps,
    ``--help``, another config) and every other composition error are left to Hydra's own report.
    """
    try:
        args = get_args_parser().parse_args(list(argv))
    except SystemExit:  # not a command line Hydra accepts: Hydra says why
        return
    if args.multirun or args.help or args.hydra_help or args.info or args.shell_completion:
        return
    if args.config_name or args.config_dir or args.config_path or args.experimental_rerun:
        return
    overrides = [o for o in args.overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            compose(config_name, overrides=overrides)
    except ConfigCompositionException as e:
        if not isinstance(e.__cause__, (ConfigAttributeError, ConfigKeyError)):
            return
        found = re.search(r"override '([^']+)'", str(e))
        key = found.group(1) if found else "a key"
        raise ConfigError(
            f"{key} is not a setting of {config_name}.yaml: check its spelling "
            f"(python -m ddpm_lab.{config_name} --cfg job lists them)"
        ) from None
    except Exception:  # anything else (an unknown group option, bad syntax): Hydra's own message
        return


def comma_list(argv: Sequence[str], key: str) -> list[str]:
    """``key=a,b,c`` (Hydra's sweep syntax, which it refuses outside ``--multirun``) as the list ``key=[a,b,c]``,
    unless the command line is a multirun."""
    if any(a in ("-m", "--multirun") for a in argv):
        return list(argv)
    pattern = re.escape(key) + r"=[^\[\]'\"]*,[^\[\]'\"]*"
    return [f"{key}=[{a[len(key) + 1 :]}]" if re.fullmatch(pattern, a) else a for a in argv]


def entry_point(config_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a ``@hydra.main`` function: the command line's keys are checked first (one line, exit status 2)."""

    def wrap(main: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> Any:
            with user_errors():
                check_typed_keys(config_name, sys.argv[1:])
            return main(*args, **kwargs)

        return run

    return wrap
