"""Inference model files: TransformerNet weights plus JSON metadata in one safetensors file.

safetensors holds tensors and strings only, so loading a model can never execute code. Training
checkpoints (``.ckpt``) are read with ``torch.load(weights_only=True)`` for the same reason.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from nst_ff.errors import UserError, brief
from nst_ff.files import atomic_write
from nst_ff.net import TransformerNet
from nst_ff.paths import model_dirs, models_dir

FORMAT = "nst_ff.model/1"
# The model files that can be named without a path (a .ckpt always needs its path).
NAMED_SUFFIXES = (".safetensors", ".onnx")


class ModelFileError(UserError, ValueError):
    """A model file cannot be used; the message names the file and the reason."""


def save_model(path: str | Path, net: TransformerNet, metadata: dict[str, Any]) -> None:
    """Write ``net``'s weights and ``metadata`` (must include nothing that is not JSON) atomically."""
    state = {key: value.detach().cpu().contiguous() for key, value in net.state_dict().items()}
    header = {"format": FORMAT, "net": json.dumps(net.config), "metadata": json.dumps(metadata, default=str)}
    atomic_write(path, lambda file: file.write(save(state, metadata=header)))


def run_record(hparams: Mapping[str, Any], steps: int, style_sha256: str | None) -> dict[str, Any]:
    """How a training run (its module's ``hparams``) made its model: the style, its image and loss. An exported
    model records it (``StyleTransferModule.export_metadata``); a ``.ckpt`` gives it back when loaded, so that it
    serves as a distillation teacher as its export does. Empty for a run without a style and loss of its own."""
    style, loss = hparams.get("style") or {}, hparams.get("loss")
    if not (style.get("name") and loss):
        return {}
    record = {"style": style["name"], "loss": dict(loss), "vgg": loss["vgg"], "steps": steps}
    record["vgg_weights"] = (loss.get("weights") or {}).get("source", "torchvision")
    if style.get("image"):
        record.update(style_image=Path(style["image"]).name, style_sha256=style_sha256)
    return record


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    if not os.access(path, os.R_OK):  # safetensors said "No such file or directory", and advised a re-download
        raise ModelFileError(f"{path}: permission denied; change its permissions, or give another model file")
    if path.suffix.lower() == ".ckpt":
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            hparams = checkpoint["hyper_parameters"]
            state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
            run = run_record(hparams, checkpoint["global_step"], checkpoint.get("style_sha256"))
            metadata = {"checkpoint": str(path), "global_step": checkpoint["global_step"], **run}
            return state, dict(hparams["net"]), metadata
        except Exception as error:
            # torch's own messages for these say nothing useful here or advise weights_only=False.
            if not zipfile.is_zipfile(path):
                reason = "not a PyTorch checkpoint: torch.save writes zip archives"
            elif isinstance(error, pickle.UnpicklingError):
                reason = "it holds Python objects beyond tensors and plain values, which could run code: refused"
            elif isinstance(error, KeyError):
                reason = f"no {error} entry in it"
            else:
                reason = brief(error)
            raise ModelFileError(
                f"{path}: not a readable nst-ff training checkpoint ({reason}); give a .ckpt from a train.py "
                "run's checkpoints/ folder, or its exported .safetensors"
            ) from None
    try:
        with safe_open(str(path), framework="pt") as file:
            header = file.metadata() or {}
            state = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(
            f"{path}: not a readable model file ({brief(error)}); re-export or re-download it"
        ) from None
    if header.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an nst-ff model (format {header.get('format')!r}, expected {FORMAT!r})")
    try:
        return state, json.loads(header["net"]), json.loads(header["metadata"])
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: broken metadata ({error!r}); re-export or re-download the model") from None


def shipped_models() -> list[Path]:
    """Every model file that can be named without a path, where it lives: the shipped models (a checkout's
    checkpoints/ or the installed package's copy), then the user's (``nst_ff.paths.models_dir()``); in each
    folder its ``.safetensors`` files, then its ``.onnx`` files, by name. ``resolve_model`` takes the first of
    a name."""
    return [path for folder in model_dirs() for suffix in NAMED_SUFFIXES for path in sorted(folder.glob(f"*{suffix}"))]


def resolve_model(name_or_path: str) -> Path:
    """A path to a model file, else a name looked up in ``model_dirs()`` in order: ``name`` as
    ``<name>.safetensors`` or ``<name>.onnx``, or ``name.onnx`` / ``name.safetensors`` as it is."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    names = [name_or_path] if path.suffix in NAMED_SUFFIXES else [name_or_path + s for s in NAMED_SUFFIXES]
    for folder in model_dirs():
        for name in names:
            if (folder / name).is_file():
                return folder / name
    known = ", ".join(dict.fromkeys(p.stem for p in shipped_models())) or "none"
    raise UserError(
        f"{name_or_path}: no such model file or shipped model (known: {known}); give a model file's path, or put "
        f"the file in {models_dir()} (set NST_FF_HOME to move that folder) to use it by name"
    )


def model_with_weights(option: str, name_or_path: str) -> Path:
    """``resolve_model`` for an option that needs the model's weights (``model.init_from``, ``teacher``,
    nst-export's ``model``): an ONNX export holds a graph that only onnxruntime runs."""
    path = resolve_model(name_or_path)
    if path.suffix.lower() == ".onnx":
        raise UserError(
            f"{option}={name_or_path}: {path} is an ONNX export, which holds no weights torch can use; give the "
            "model's .safetensors or .ckpt"
        )
    return path


def load_model(path: str | Path) -> tuple[TransformerNet, dict[str, Any]]:
    """Load an exported model (``.safetensors``) or a training checkpoint (``.ckpt``) for inference; an ONNX
    export (``.onnx``) gives an ``nst_ff.onnx.OnnxNet``, which runs like a TransformerNet but has no weights."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        from nst_ff.onnx import OnnxNet  # onnxruntime is optional: imported only for .onnx files

        net = OnnxNet(path)
        return net, net.metadata  # type: ignore[return-value]
    state, config, metadata = _read(path)
    try:
        net = TransformerNet(**config)
        net.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(
            f"{path}: weights do not fit a TransformerNet {config} ({brief(error)}); re-export or re-download the model"
        ) from None
    return net.eval(), metadata
