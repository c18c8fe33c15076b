"""Mistakes a user can fix, and how they are reported: one line on stderr, exit status 2.

Every error a user can cause (a bad setting, a missing or hostile file) is a :class:`UserError`; the message
names the setting or file and says how to fix it. Value checks that constructors share live here too, so a
``sampler.steps=abc`` reads the same whether it comes from a config or from a notebook.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Base of the errors a user causes and can fix; the message names the setting or file and the fix."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work: caught before any data is read or any file is written."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable, unsafe or not one of ours; the message says which and why."""


class NewerCheckpointError(CheckpointError):
    """A checkpoint written by a newer ddpm_lab (a format this version cannot read): upgrade to read it."""


class UnsafeConfigError(UserError, ValueError):
    """A config read from disk asks for something outside the allow-list (see ``ddpm_lab.artifacts.allow_list``)."""


class ResumeError(UserError, ValueError):
    """``resume=`` names something that cannot be resumed; the message says why and what to pass."""


class DatasetError(UserError, RuntimeError):
    """A dataset is missing, empty or unreadable; the message says which files and how to fix it."""


class OutputExistsError(UserError, FileExistsError):
    """An output file is already there; nothing is overwritten."""


class RunFolderBusyError(UserError, RuntimeError):
    """A run folder is in use by another live process (its ``.lock``)."""


class ReportError(UserError, RuntimeError):
    """A report that cannot be rewritten without losing what it holds (e.g. a sweep's ``sweep.md``)."""


class RunFolderError(UserError, OSError):
    """A run folder (or a file in it) cannot be used safely: a symbolic link or hard link where a plain file must be,
    a name too long, a full disk, no permission. The message names the path and how to fix it."""


class WeightsMissingError(UserError, FileNotFoundError):
    """A feature extractor's weights file is not where the config says; the message says where to put it."""


class WeightsMismatchError(UserError, ValueError):
    """A weights file is not the one expected (its SHA-256 differs): it is not loaded, and a download is not kept."""


class ReferenceStatsError(UserError, ValueError):
    """A reference-statistics file (``reference_stats=``) is missing, unsafe, or does not fit the features."""


class ReportedElsewhere(UserError):
    """A failure that another rank of a multi-process run reports: this rank exits with ``status``, silently,
    so the user reads one line (rank 0's), not one per process."""

    def __init__(self, status: int = EXIT_USER_ERROR) -> None:
        super().__init__("reported by rank 0")
        self.status = status


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text[:limit] if limit else text


def one_line(error: BaseException) -> str:
    """The whole message as one line (multi-line messages joined), without a traceback."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def os_reason(error: OSError) -> str:
    """An OS error as ``<path>: <reason>`` (``File name too long``, ``No space left on device``, ...)."""
    reason = error.strerror or type(error).__name__
    return f"{error.filename}: {reason}" if error.filename else reason


def exit_with(error: BaseException) -> NoReturn:
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)


@contextmanager
def user_errors(cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Turn every :class:`UserError` into ``error: <message>`` on stderr and exit status 2 (a
    :class:`ReportedElsewhere` into its status alone).

    ``cleanup`` runs first (e.g. removing a run folder that holds nothing but Hydra's own files).
    Any other exception (a real bug, a non-finite loss) propagates with its traceback.
    """
    try:
        yield
    except UserError as e:
        if cleanup is not None:
            cleanup()
        if isinstance(e, ReportedElsewhere):
            raise SystemExit(e.status) from None
        exit_with(e)


# ------------------------------------------------------------------------------------------------ value checks
def check_number(
    value: Any,
    key: str,
    kind: type = float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Any:
    """``value`` (the setting ``key``) as a ``kind`` (int or float) within [low, high], open ends where asked.

    Raises :class:`ConfigError` naming ``key``: ``8.0`` passes as an integer, ``8.5``, ``"abc"`` and ``True`` do not.
    """
    if value is None and optional:
        return None
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok_type = ok_type and float(value) == int(value)
    if not ok_type:
        article = "an integer" if kind is int else "a number"
        raise ConfigError(f"{key} must be {article}, got {value!r}: set {key}=<number>")
    value = kind(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if low is not None and high is not None:
            allowed = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            allowed = f"{'>' if low_open else '>='} {low}"
        else:
            allowed = f"{'<' if high_open else '<='} {high}"
        raise ConfigError(f"{key} must be {allowed}, got {value}")
    return value


def check_choice(value: Any, key: str, choices: Sequence[Any]) -> Any:
    """``value`` (the setting ``key``) when it is one of ``choices``; else a :class:`ConfigError` listing them."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_flag(value: Any, key: str) -> bool:
    """``value`` (the setting ``key``) as a bool: ``true``/``false`` only, not ``"maybe"`` (a truthy string) or 1."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}: set {key}=true or {key}=false")
    return value


def check_list(value: Any, key: str, kind: type = int, low: float | None = None, example: str = "[0,1]") -> list:
    """``value`` (the setting ``key``) as a non-empty list of ``kind`` numbers each >= ``low``.

    A scalar where a list belongs (``timesteps=5``) names the key and shows the list syntax.
    """
    if isinstance(value, (str, bytes, int, float)) or value is None or not hasattr(value, "__iter__"):
        raise ConfigError(f"{key} must be a list, got {value!r}: set {key}={example} (quote it in a shell)")
    items = list(value)
    if not items:
        raise ConfigError(f"{key} is an empty list: set {key}={example}")
    try:
        return [check_number(item, key, kind, low=low) for item in items]
    except ConfigError:
        what = ("integers" if kind is int else "numbers") + (f" >= {low}" if low is not None else "")
        raise ConfigError(f"{key} must be a list of {what}, got {items!r}: set {key}={example}") from None
