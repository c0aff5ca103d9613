"""Errors caused by what a user passed in (a file, a path, a setting).

Entry points print these as one line and exit non-zero; anything else is a bug and keeps its traceback.
"""

import importlib
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, ModuleType
from typing import NoReturn


class UserError(Exception):
    """Base class: the message names the file or setting, what is wrong, and what to do."""


def brief(error: BaseException, limit: int = 200) -> str:
    """A library's exception as part of a one-line message: its text on one line (torch's state-dict and load
    errors run over several), at most ``limit`` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# The checkout's scripts, and the commands an installed nst-ff has in their place (pyproject's [project.scripts]).
INSTALLED_COMMANDS = {"train": "nst-train", "infer": "nst-infer", "optimize": "nst-optimize"}


def as_typed_here(text: str) -> str:
    """``text`` (a message, --help) naming the commands as this process's user types them: an installed command
    (nst-train) names its siblings, not the checkout's ``python train.py`` or ``infer.py``, which it has none of."""
    if not Path(sys.argv[0]).name.startswith("nst-"):
        return text
    # Not a path's last part (input=scripts/infer.py): the scripts are named alone.
    pattern = r"(?:python )?(?<![\w/.~-])(train|infer|optimize)\.py\b"
    return re.sub(pattern, lambda m: INSTALLED_COMMANDS[m.group(1)], text)


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
        if cause is None and isinstance(error, PermissionError) and error.filename:
            # A file or folder this user may not read or write (another user's, chmod): no bug to trace.
            cause = UserError(f"{error.filename}: permission denied; change its permissions, or give another path")
        if cause is None:
            raise
        print(f"error: {as_typed_here(' '.join(str(cause).split()))}", file=sys.stderr)  # one line, whatever it quotes
        sys.exit(2)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's pre-emption) inside ``exit_on_ctrl_c``: raised where Ctrl-C's
    KeyboardInterrupt is, so that the same code keeps what is done."""


def exit_stopped(kept: str, stop: KeyboardInterrupt | None = None) -> NoReturn:
    """One line saying what a command stopped by Ctrl-C (or ``stop``: a ``Terminated``) ``kept``, and the shells'
    exit status for it (130, or 143 for SIGTERM)."""
    signum = signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT
    print(as_typed_here(f"stopped ({'Ctrl-C' if signum == signal.SIGINT else signum.name}); {kept}"), file=sys.stderr)
    sys.exit(128 + signum)


@contextmanager
def exit_on_ctrl_c(kept: str) -> Iterator[None]:
    """For entry points: Ctrl-C or SIGTERM is ``exit_stopped(kept)``, not a traceback from wherever the network
    was, nor (SIGTERM's default) an exit that keeps nothing: a photo's optimisation writes its best image so far."""

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    main = threading.current_thread() is threading.main_thread()  # only its handlers can be set
    previous = signal.signal(signal.SIGTERM, terminate) if main else None
    try:
        yield
    except KeyboardInterrupt as stop:
        exit_stopped(kept, stop)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency; a missing one is a one-line UserError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{module} is not installed (needed for {purpose}); pip install 'nst-ff[{extra}]'") from None
