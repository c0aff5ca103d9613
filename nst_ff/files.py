"""Outputs that are never half there: atomic file writes, and run folders removed when a command fails before
writing anything of its own."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from nst_ff.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OutputError(UserError, OSError):
    """No file can be written at an output path the user chose (no such folder, no permission, a folder there)."""


def cannot_write(path: str | Path, error: OSError) -> str:
    # mkdir's "File exists" when a file stands where a folder of the path would be: which one.
    in_the_way = next((folder for folder in Path(path).parents if folder.is_file()), None)
    reason = f"{in_the_way} is a file, not a folder" if in_the_way else error.strerror or error
    return f"{path}: cannot write ({reason}); choose a writable output"


def _temporary_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in ``path``'s folder (created if missing): its descriptor and name."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise OutputError(cannot_write(path, error)) from None


def require_writable(path: str | Path) -> None:
    """Raise ``OutputError`` now if ``path``'s folder cannot take a file: for commands that work for minutes
    before they write their output."""
    if Path(path).is_dir():
        raise OutputError(f"{path}: is a folder; give a file name to write")
    fd, tmp = _temporary_beside(Path(path))
    os.close(fd)
    os.unlink(tmp)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``.
    Raises ``OutputError`` when ``path``'s folder cannot take a file; errors of ``write`` itself propagate."""
    path = Path(path)
    fd, tmp = _temporary_beside(path)
    _UNFINISHED.add(tmp)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give the usual permissions
        try:
            os.replace(tmp, path)
        except OSError as error:  # e.g. a folder of that name is there
            raise OutputError(cannot_write(path, error)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _UNFINISHED.discard(tmp)


# Temporaries of the writes in progress. A second Ctrl-C can end the process while a writer thread is in the middle of
# one (infer.py's writers, which the interpreter joins at exit): the truncated hidden file stayed beside the outputs.
_UNFINISHED: set[str] = set()


@atexit.register
def _remove_unfinished() -> None:
    for tmp in list(_UNFINISHED):
        Path(tmp).unlink(missing_ok=True)


def new_run_folder(path: Path) -> Path:
    """Make and return the first of ``path``, ``path_2``, ``path_3``... that does not exist yet (``mkdir`` is
    atomic: processes racing for a name each get their own); ``OutputError`` if none can be made there."""
    folder, number = path, 1
    while True:
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            number += 1
            folder = path.with_name(f"{path.name}_{number}")
        except OSError as error:
            raise OutputError(
                f"{folder}: cannot make the run folder ({error.strerror}); run from a folder you can write to, "
                "or set hydra.run.dir=FOLDER"
            ) from None


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextmanager
def removed_if_unused(folder: str | Path) -> Iterator[None]:
    """If the block fails and ``folder`` holds nothing but Hydra's own files (``.hydra/``, ``*.log``), remove it,
    and the folders above it that are left empty, up to the current folder (``outputs/<style>/``): a command
    stopped by a mistake leaves no empty run folder behind."""
    try:
        yield
    except BaseException:
        path = Path(folder).absolute()
        if path.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in path.iterdir()):
            shutil.rmtree(path, ignore_errors=True)
            here = Path.cwd()
            for parent in path.parents:
                if parent == here or not parent.is_relative_to(here) or any(parent.iterdir()):
                    break
                parent.rmdir()
        raise
