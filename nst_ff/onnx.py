"""ONNX: export a trained model for other runtimes, and run an exported file with onnxruntime.

Export: ``torch.export`` traces the TransformerNet with symbolic batch, height and width, then torch's
ONNX exporter (``torch.onnx.export(dynamo=True)``) translates the program. The padding to a multiple of
4 and the crop back are part of ``TransformerNet.forward``, so they are in the graph and any size runs.
Opset 18 is the oldest the exporter writes natively (asked for 17, its version converter fails on Pad and
the file stays at 18); onnxruntime 1.14+ and TensorRT 8.6+ read it, and the graph needs nothing newer.

The TorchScript-based exporter (``dynamo=False``) is not used: its tracer cannot follow the size
arithmetic (``torch.sym_max`` refuses its traced sizes, and with Python's ``max`` the file it wrote turned
a 37x53 image into 36x52).
The network is traced in the forms that run fastest in onnxruntime (``nst_ff.execution.export_execution``):
torch's instance norm (an InstanceNormalization node) and the sub-pixel layers. pytorch/pytorch#99140 (the
TorchScript exporter fails on instance norm after an upsampling, whose channel count its shape inference
loses) does not bite the dynamo exporter: tests/test_onnx.py exports instance norm after nearest and bilinear
upsampling.

onnx, onnxscript (export) and onnxruntime (running, checking) are optional: ``pip install 'nst-ff[onnx]'``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from nst_ff import errors
from nst_ff.errors import UserError, brief
from nst_ff.execution import export_execution
from nst_ff.export import ModelFileError, load_model, model_with_weights
from nst_ff.files import atomic_write, require_writable
from nst_ff.images import load_image, resize
from nst_ff.net import TransformerNet
from nst_ff.paths import SAMPLES_DIR

FORMAT = "nst_ff.onnx/1"
OPSET = 18
# The newest opset torch's exporter targets (torch.onnx._constants.ONNX_MAX_OPSET in torch 2.14); newer ones
# would go through onnx's version converter, which this project does not test.
MAX_OPSET = 23
INPUT, OUTPUT = "image", "stylized"
CONVENTION = f"input {INPUT!r}: float32 (N, 3, H, W) RGB in [0, 1], any N, H, W >= 1; output {OUTPUT!r}: the same shape"
# The export's own check: onnxruntime against torch fp32 on a real photo, a square and two odd sizes.
CHECK_PHOTO = SAMPLES_DIR / "chelsea.jpg"
CHECK_SIZES = ((256, 256), (301, 199), (37, 61))
MIN_PSNR = 40.0
# Batch 2 and sizes that are neither a multiple of 4 nor under 16: torch.export specialises a dimension
# of size 1, and a size that needs no padding would make it guard on "no padding".
_EXAMPLE = (2, 3, 37, 53)


def require(module: str) -> ModuleType:
    return errors.require(module, "onnx", "ONNX export and .onnx models")


def check_opset(opset: int) -> None:
    if not OPSET <= opset <= MAX_OPSET:
        raise UserError(
            f"opset={opset}: torch's exporter writes opsets {OPSET} to {MAX_OPSET}; choose one of them ({OPSET}: the "
            "widest support)"
        )


def to_onnx(net: TransformerNet, metadata: dict[str, Any], opset: int = OPSET) -> bytes:
    """The serialised ONNX model of ``net`` (dynamic batch, height and width) with ``metadata`` in its
    metadata_props."""
    for module in ("onnx", "onnxscript"):
        require(module)
    net = export_execution().prepare(copy.deepcopy(net).eval())  # the caller's network keeps its forms
    dims = {
        0: torch.export.Dim("batch", min=1),
        2: torch.export.Dim("height", min=1),
        3: torch.export.Dim("width", min=1),
    }
    # torch.export raises if the trace specialised a dimension; torch.onnx.export given the module would
    # instead retry with fallbacks that can silently fix the traced size.
    program = torch.export.export(net, (torch.rand(_EXAMPLE),), dynamic_shapes={"image": dims}, strict=False)
    exported = torch.onnx.export(
        program,
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes={"image": {0: "batch", 2: "height", 3: "width"}},  # names the axes in the file
        verbose=False,
    )
    model = exported.model_proto
    props = {
        "format": FORMAT,
        "net": json.dumps(net.config),
        "metadata": json.dumps(metadata, default=str),
        "convention": CONVENTION,
    }
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


class OnnxNet(nn.Module):
    """An exported model run by onnxruntime, called like a TransformerNet: (N, 3, H, W) float images in
    [0, 1] -> stylised images of the same shape, on the input's device (onnxruntime runs fp32 on its own
    provider; ``nst_ff.stylize.Stylizer`` wraps it like a TransformerNet). ``source`` is a path or the file's
    bytes; the CUDA provider is used where the installed onnxruntime has it, else the CPU."""

    def __init__(self, source: str | Path | bytes, providers: list[str] | None = None) -> None:
        super().__init__()
        ort = require("onnxruntime")
        name = "the ONNX model" if isinstance(source, bytes) else str(source)
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise ModelFileError(f"{source}: no such model file")
        available = ort.get_available_providers()
        self.providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are about the graph, not the user's input
        try:
            self.session = ort.InferenceSession(
                source if isinstance(source, bytes) else str(source), options, providers=self.providers
            )
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            raise ModelFileError(f"{name}: not a readable ONNX model ({brief(error)}); export it again") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if props.get("format") != FORMAT:
            raise ModelFileError(
                f"{name}: not an nst-ff ONNX export (format {props.get('format')!r}, expected {FORMAT!r}); "
                "export the model with nst-export (nst_ff.onnx.main)"
            )
        self.config = json.loads(props["net"])
        self.metadata = json.loads(props["metadata"])

    def __deepcopy__(self, memo: dict) -> OnnxNet:
        return self  # the session holds no state that a run changes: copies (e.g. the Stylizer's) share it

    @torch.compiler.disable  # onnxruntime runs the graph: nothing to compile (Stylizer(compile=True) is a no-op)
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        (out,) = self.session.run([OUTPUT], {INPUT: array})
        return torch.from_numpy(out).to(images.device)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def check(net: TransformerNet, onnx_net: OnnxNet, photo: torch.Tensor) -> dict[str, float]:
    """PSNR (dB) of onnxruntime's output against torch fp32 at each of ``CHECK_SIZES``, keyed "HxW"."""
    results = {}
    for height, width in CHECK_SIZES:
        image = resize(photo, (height, width))
        with torch.inference_mode():
            reference = net.float()(image)
        results[f"{height}x{width}"] = psnr(onnx_net(image), reference)
    return results


def export_file(net: TransformerNet, metadata: dict[str, Any], output: str | Path, opset: int = OPSET) -> dict:
    """Export ``net`` to ``output``, checked with onnxruntime before anything is written (atomically).
    Returns the PSNR at each check size."""
    data = to_onnx(net, metadata, opset)
    results = check(net, OnnxNet(data, providers=["CPUExecutionProvider"]), load_image(CHECK_PHOTO))
    if min(results.values()) < MIN_PSNR:
        raise RuntimeError(f"ONNX export differs from torch (PSNR dB {results}, need >= {MIN_PSNR}); nothing written")
    atomic_write(output, lambda file: file.write(data))
    return results


def main(model: str, output: str | None = None, opset: int = OPSET, overwrite: bool = False) -> int:
    """The nst-export command: ``model`` (a shipped name, .safetensors or .ckpt) -> ``output`` (an .onnx
    file or a folder; default ``<model name>.onnx`` in the current folder). Returns the exit status."""
    path = model_with_weights("model", model)
    target = Path(output or f"{path.stem}.onnx")
    if target.is_dir() or (output or "").endswith(("/", os.sep)):  # a folder, or one to make (output=exports/)
        target = target / f"{path.stem}.onnx"
    if target.suffix.lower() != ".onnx":
        raise UserError(f"output={target}: an ONNX file name must end in .onnx")
    if target.exists() and not overwrite:
        print(f"kept {target} (exists; overwrite=true replaces it)")
        return 0
    check_opset(opset)
    require_writable(target)  # now, not after the export's half minute
    net, metadata = load_model(path)
    results = export_file(net, {**metadata, "source": path.name}, target, opset)
    sizes = ", ".join(f"{size} {value:.1f} dB" for size, value in results.items())
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MB, opset {opset}); onnxruntime vs torch fp32: {sizes}")
    return 0
