"""OmegaConf resolvers used by the configs in ``conf/``: call ``register_resolvers()`` before composing."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from nst_ff.device import auto_precision

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    """``${project_root:}``: the repository folder (bundled styles and samples live there);
    ``${auto_precision:ACCELERATOR}``: bf16 mixed precision where the hardware is fast at it, else fp32."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", auto_precision)
