"""Errors caused by what a user passed in (a file, a path, a setting).

Entry points print these as one line and exit non-zero; anything else is a bug and keeps its traceback.
"""

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import NoReturn


class UserError(Exception):
    """Base class: the message names the file or setting, what is wrong, and what to do."""


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For entry points: a ``UserError`` becomes one line on stderr and exit status 2, no traceback."""
    try:
        yield
    except Exception as error:
        # Hydra's instantiate wraps what a constructor raised: the user's mistake is the cause.
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)


def exit_stopped(kept: str) -> NoReturn:
    """One line saying what a command stopped by Ctrl-C ``kept``, and exit status 130 (the shells' status for it)."""
    print(f"stopped (Ctrl-C); {kept}", file=sys.stderr)
    sys.exit(130)


@contextmanager
def exit_on_ctrl_c(kept: str) -> Iterator[None]:
    """For entry points: Ctrl-C is ``exit_stopped(kept)``, not a traceback from wherever the network was."""
    try:
        yield
    except KeyboardInterrupt:
        exit_stopped(kept)


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency; a missing one is a one-line UserError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{module} is not installed (needed for {purpose}); pip install 'nst-ff[{extra}]'") from None
