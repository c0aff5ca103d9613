"""Errors caused by what a user passed in (a file, a path, a setting).

Entry points print these as one line and exit non-zero; anything else is a bug and keeps its traceback.
"""

import sys
from collections.abc import Iterator
from contextlib import contextmanager


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
