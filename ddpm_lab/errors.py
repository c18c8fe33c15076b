"""Mistakes a user can fix (a bad setting, a bad file): reported as one line on stderr with exit status 2."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator, NoReturn

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Base of the errors a user causes and can fix; the message names the setting or file and the fix."""


class ConfigError(UserError, ValueError):
    """A composed config that cannot work: caught before any data is read or any file is written."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception type that means 'your input is wrong' rather than 'the program failed'."""
    from ddpm_lab.data import DatasetError  # imported late: the data package pulls in torchvision

    return (UserError, DatasetError)


def one_line(error: BaseException) -> str:
    """The message as one line (multi-line messages joined), without a traceback."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def exit_with(error: BaseException) -> NoReturn:
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)


@contextmanager
def user_errors(cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Turn the project's user errors into ``error: <message>`` on stderr and exit status 2.

    ``cleanup`` runs first (e.g. removing a run folder that holds nothing but Hydra's own files).
    Any other exception (a real bug, a non-finite loss) propagates with its traceback.
    """
    try:
        yield
    except user_error_types() as e:
        if cleanup is not None:
            cleanup()
        exit_with(e)
