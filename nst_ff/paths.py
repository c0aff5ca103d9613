"""Where the project's own files are: configs, bundled paintings and photos, shipped models, the user's models."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# An installed wheel carries conf/, assets/ and checkpoints/ inside the package (pyproject.toml maps them there);
# a checkout and an editable install have them beside the package, at the repository's root.
PROJECT_ROOT = _PACKAGE if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent
CONFIG_DIR = PROJECT_ROOT / "conf"
STYLES_DIR = PROJECT_ROOT / "assets" / "styles"
SAMPLES_DIR = PROJECT_ROOT / "assets" / "samples"
SHIPPED_MODELS_DIR = PROJECT_ROOT / "checkpoints"


def models_dir() -> Path:
    """The user's own models folder, searched by name after the shipped models: ``$NST_FF_HOME/models``, by
    default ``~/.cache/nst-ff/models`` (under ``$XDG_CACHE_HOME`` when set). Read at each call, not at import."""
    home = os.environ.get("NST_FF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "nst-ff"
    return Path(home).expanduser() / "models"


def model_dirs() -> list[Path]:
    """Where models are found by name, first match wins."""
    return [SHIPPED_MODELS_DIR, models_dir()]
