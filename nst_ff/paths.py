"""Where the project's own files are: configs, bundled paintings and photos, shipped models."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"
STYLES_DIR = PROJECT_ROOT / "assets" / "styles"
SAMPLES_DIR = PROJECT_ROOT / "assets" / "samples"
SHIPPED_MODELS_DIR = PROJECT_ROOT / "checkpoints"
