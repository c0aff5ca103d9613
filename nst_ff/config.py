"""OmegaConf resolvers used by the configs in ``conf/``: call ``register_resolvers()`` before composing."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from nst_ff.device import auto_precision

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


def style_path_overrides(args: list[str]) -> list[str]:
    """Let ``style=`` name a painting's file as well as a ``conf/style`` option: ``style=a/b.jpg``
    becomes ``style.name=b style.image=/abs/a/b.jpg`` (Hydra would otherwise look for a config)."""
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "style" and Path(value).suffix and Path(value).expanduser().is_file():
            path = Path(value).expanduser().resolve()
            out += [f"style.name={path.stem}", f"style.image={path}"]
        else:
            out.append(arg)
    return out


def register_resolvers() -> None:
    """``${project_root:}``: the repository folder (bundled styles and samples live there);
    ``${auto_precision:ACCELERATOR}``: bf16 mixed precision where the hardware is fast at it, else fp32;
    ``${stem:NAME_OR_PATH}``: a model's name from its shipped name or file (``a/b.safetensors`` -> ``b``)."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", auto_precision)
    if not OmegaConf.has_resolver("stem"):
        OmegaConf.register_new_resolver("stem", lambda name: Path(str(name)).stem)
