"""How the one TransformerNet (and the training loss around it) runs on a device: the single place
where the execution choices are made. ``nst_ff.device`` says which device and precision; this module
says how to use them.

- CUDA inference: fp16 weights converted once (autocast re-casts every weight on every call) in channels_last,
  with the full-resolution layers in their sub-pixel forms (``_subpixel_layers``); eager, reflection padding
  built from slices (CUDA's reflection_pad2d writes NCHW only, so a channels_last network would be converted
  back and forth at every padded convolution); compiled, inductor's own padding and CUDA graphs
  (``compile_mode``); cudnn autotuning only where compiled (``Execution.autotune``). One H200, 1024 px, fp16
  (benchmarks/results/gpu_probe_nvidia_h200.json and its history in README, Performance): eager NCHW with torch's
  instance norm 11.7 ms, channels_last with padding by slices 7.42, with the sub-pixel layers too 6.68;
  compiled with CUDA graphs, the sub-pixel layers and channels_last 2.42, 2.71 with padding by slices (the
  reference execution 8.8).
- CUDA training: NCHW with torch's fused instance-norm kernel (the scale-and-shift form is about eleven small
  kernels), the sub-pixel layers, Lightning's bf16 autocast, a compiled step with CUDA graphs, since a 256 px
  step is launch-bound (hundreds of small kernels): a batch-4 step 23.7 ms eager, 7.0 ms compiled (H200).
- CPU: channels_last with the scale-and-shift InstanceNorm (aten's kernel converts channels_last to
  contiguous and back), bf16 only where the CPU has native bf16 instructions (``resolve_dtype``), and the
  full-resolution layers in their sub-pixel forms (``_subpixel_layers``).
- Anything in NCHW uses torch's kernel; anything channels_last uses ours.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nst_ff.device import resolve_dtype
from nst_ff.errors import UserError
from nst_ff.net import InstanceNorm, OutputLayer, ReflectionPad, Upsample

COMPILE_SETTINGS = (True, False, "auto")

# When compiling pays off within one job: (seconds a compilation costs, seconds it saves per unit of
# work). Inference counts megapixels, training counts steps. CUDA: one H200 (benchmarks/gpu_probe.sh, torch
# 2.11, the second probe of 2026-11-28): infer.py on 100 photos of 1024 px took 26.7 s compiled against 6.0 s eager
# (21.7 s with the compile cache warm), so a compilation costs ~21 s; compiled, the network's 6.68 ms per megapixel
# (eager, with the sub-pixel layers) fall to about 2.5, but a folder is then bound by decoding and encoding (251
# images/s with no network at all, 3.98 ms an image), which leaves ~2.7 ms saved per megapixel. The batch-4
# training step's first call took 42 s compiled, and the step went from 23.7 to 7.0 ms (bf16). CPUs never
# compile on auto. With AVX-512 compiling saves too little to repay itself in any job: 2-core EPYC with
# AVX512-BF16, 1024 px, ~10 s to compile: with the sub-pixel layers (two threads, bf16) full network 0.361 ->
# 0.360 s, fast 0.102 -> 0.101 s. An AVX2-only EPYC once gained 1.3x (1024 px, 3.68 -> 2.84 s, fp32, 13 to 66 s
# per graph), before the channels_last instance norm and the sub-pixel layers made eager 2.8x faster; on the
# AVX-512 EPYC with oneDNN, aten and inductor held to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2
# ATEN_CPU_CAPABILITY=avx2``, ``cpp.simdlen=256``), compiled now equals eager (full network 1.30 s both, fast
# 0.27 s both, fp32, in two sessions), so that entry went: compiling would cost an AVX2 folder run 10-66 s
# for nothing. A measurement on a real AVX2-only CPU that shows a gain brings it back. Training is not
# compiled on CPUs: on that EPYC the compiled bf16 step was slower (batch 4 at 128 px: 0.33 s against 0.30 s
# eager; bench_train.py --compile), and with the current style loss saves 3% (0.245 against 0.252 s) after
# 58 s of compiling: 8000 steps to repay it. A warm compile cache (``compile_cache_dir``) makes later
# compilations several times cheaper; these thresholds assume a cold one.
_INFERENCE_COMPILE = {"cuda": (21.0, 0.0027)}
_TRAINING_COMPILE = {"cuda": (42.0, 0.0167)}


@dataclass(frozen=True)
class Execution:
    """``dtype``: the network's weights and activations (None: float32; training leaves precision to
    Lightning's autocast); ``channels_last``: memory format; ``fused_norm``: torch's instance-norm
    kernel instead of the channels_last-friendly one; ``subpixel``: the upsampling and output layers
    computed by pixel phase (``nst_ff.net.Upsample``, ``nst_ff.net.OutputLayer``); ``slice_padding``:
    reflection padding from slices (``nst_ff.net.ReflectionPad``); ``autotune``: cudnn times the kernels for
    each new shape first (``torch.backends.cudnn.benchmark`` during ``autotuning``, CUDA; None leaves it alone)."""

    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = False
    fused_norm: bool = True
    subpixel: bool = False
    slice_padding: bool = False
    autotune: bool | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def prepare(self, net: nn.Module) -> nn.Module:
        """Set the norm kind and the layers' forms, then move ``net`` (in place) to the device, dtype and layout."""
        for module in net.modules():
            if isinstance(module, InstanceNorm):
                module.fused = self.fused_norm
            elif isinstance(module, (Upsample, OutputLayer)):
                module.subpixel = self.subpixel
            elif isinstance(module, ReflectionPad):
                module.by_slices = self.slice_padding
        return net.to(self.device, dtype=self.dtype, memory_format=self.memory_format)

    @contextmanager
    def autotuning(self) -> Iterator[None]:
        """Around the network's calls: cudnn's autotuning as ``autotune`` says, the process's setting restored after,
        so that two networks in one process (a compiled Stylizer and an eager one) each run with their own."""
        if self.device.type != "cuda" or self.autotune is None:
            yield
            return
        before, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, self.autotune
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """Images as the prepared network takes them: on the device, in its dtype and memory format."""
        images = images.to(self.device, non_blocking=True)
        return images.to(self.dtype or torch.float32).contiguous(memory_format=self.memory_format)

    def describe(self) -> str:
        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)})"
        dtype = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.dtype, "fp32")
        norm = "torch's instance norm" if self.fused_norm else "scale-and-shift instance norm"
        forms = [", sub-pixel layers"] * self.subpixel + [", padding by slices"] * self.slice_padding
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"{device}, {dtype} weights, {layout}, {norm}{''.join(forms)}"


def _layout_choices(device: torch.device, channels_last: bool, compiled: bool = False) -> dict[str, bool]:
    """What follows from the layout: our norm for channels_last, torch's kernel for NCHW; on CUDA, eager
    channels_last padding by slices (compiled, inductor fuses torch's padding into its kernels, and the slices
    cost it: 1024 px on an H200, 2.42 ms without them, 2.71 with)."""
    return {
        "channels_last": channels_last,
        "fused_norm": not channels_last,
        "slice_padding": channels_last and device.type == "cuda" and not compiled,
    }


def _subpixel_layers(device: torch.device) -> bool:
    """Whether the full-resolution layers run by pixel phase, the same functions in fewer or fuller operations:
    the upsampling layers as transposed convolutions (``nst_ff.net.Upsample``: 16 multiply-adds per input
    pixel instead of 36, no upsampled copy) and the 3-channel output convolution on 2x2 pixel blocks
    (``nst_ff.net.OutputLayer``). CPUs, 1024x1024, medians (2-core AVX-512 EPYC, freed memory kept): the full
    network's two upsampling layers took 81 ms instead of 189 in fp32 and 40 instead of 92 in bf16, its output
    layer 79 ms instead of 188 and 39 instead of 94; the whole network 1.00 -> 0.76 s in fp32 and 0.50 -> 0.39 s
    in bf16, the fast one 0.27 -> 0.18 s and 0.15 -> 0.10 s; with oneDNN and aten held to AVX2
    (``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``, fp32) 1.60 -> 1.34 s and 0.35 -> 0.26 s. A CPU training
    step (batch 4, 256 px, bf16): unchanged (the VGG is most of it). CUDA (one H200, in one process each): 1024 px
    inference, fp16, eager channels_last 7.42 -> 6.68 ms, compiled 3.30 -> 2.79 ms (NCHW); the compiled bf16
    training step at batch 16 of 256 px 19.2 -> 13.8 ms (833 -> 1158 images/s). Other devices: unmeasured."""
    return device.type in ("cpu", "cuda")


def inference_execution(
    device: torch.device, precision: str = "auto", channels_last: bool | None = None, compiled: bool = False
) -> Execution:
    """Weights converted once to ``resolve_dtype(device, precision)``; ``channels_last`` None: channels_last,
    the fastest layout measured on CPUs and on CUDA; ``compiled``: the network will run under torch.compile."""
    layout = _layout_choices(device, True if channels_last is None else channels_last, compiled)
    # cudnn autotuning repays itself only in long jobs, the compiled ones: a 100-photo folder run at 1024 px
    # (H200, eager, NCHW) went at 55 images/s with it against 135 without, and 135 against 141 warm.
    dtype = resolve_dtype(device, precision)
    return Execution(device, dtype, subpixel=_subpixel_layers(device), autotune=compiled, **layout)


def training_execution(device: torch.device, channels_last: bool | None = None) -> Execution:
    """float32 weights (Lightning's precision plugin autocasts); ``channels_last`` None: NCHW on CUDA (measured
    with torch's norm kernel; channels_last training there is unmeasured), channels_last elsewhere. The
    optimizer is fused on CUDA (``fused_optimizer``); cudnn autotuning is the trainer's (``trainer.benchmark``)."""
    layout = _layout_choices(device, device.type != "cuda" if channels_last is None else channels_last)
    return Execution(device, None, subpixel=_subpixel_layers(device), **layout)


def export_execution() -> Execution:
    """The forms an ONNX export is traced in (``nst_ff.onnx``): float32 NCHW on the CPU, torch's instance norm
    (one InstanceNormalization node instead of the eleven of the scale-and-shift form) and the sub-pixel layers.
    onnxruntime on a CPU (2-core Xeon with AMX, one thread, 1024x1024): the full network 4.5 s per image with the
    plain layers and our norm, 3.3 s in these forms (the fused norm alone: 3.9 -> 3.5 s; the plain output layer's
    3 channels were padded to 16 by onnxruntime's blocked convolution, 0.94 s of it); the fast one 1.38 -> 0.86 s."""
    return Execution(torch.device("cpu"), torch.float32, fused_norm=True, subpixel=True)


def batch_pixels(device: torch.device) -> int:
    """Pixels of same-size photos to stylise in one batch: on CUDA a 1024 px photo alone leaves the GPU
    partly idle between kernels; 8 megapixels in fp16 need about 3 GB. CPUs gain nothing from batches."""
    return 8 * 2**20 if device.type == "cuda" else 1


def fused_optimizer(device: torch.device) -> bool:
    """Adam's fused kernel: one launch for all parameters instead of a few per parameter (CUDA)."""
    return device.type == "cuda"


# Pixels per image above which ``Stylizer`` works in tiles. A whole image's activations take ~250 B per pixel
# in bf16 and ~460 B in fp32 on the CPU (the fast net at 4096x4096: 4.1 and 7.7 GB; the full net more), so
# CPUs and MPS tile above 2048x2048, which keeps any size under 4 GB; a GPU keeps 4096x4096 whole (one
# pass is faster than tiles and the statistics pass).
_TILE_ABOVE = {"cuda": 4096 * 4096}
_TILE_ABOVE_ELSEWHERE = 2048 * 2048


def tile_above_pixels(setting: int | str, device: torch.device) -> int:
    """``auto``: the device's threshold (above); a number is taken as it is."""
    return _TILE_ABOVE.get(device.type, _TILE_ABOVE_ELSEWHERE) if setting == "auto" else int(setting)


def _check(setting: bool | str, key: str) -> None:
    if setting not in COMPILE_SETTINGS:
        raise UserError(f"{key}={setting}: choose true, false or auto")


def _compile(
    setting: bool | str, key: str, pays_off: dict[str, tuple[float, float]], device: torch.device, work: float
) -> bool:
    """``setting`` as given, or for ``auto`` whether ``work`` saves more time than a compilation costs."""
    _check(setting, key)
    if setting != "auto":
        return bool(setting)
    cost, saving = pays_off.get(device.type, (float("inf"), 0.0))
    return work * saving > cost


def compile_inference(setting: bool | str, device: torch.device, megapixels: float) -> bool:
    """``auto``: compile when the job's pixels save more time than a compilation costs."""
    return _compile(setting, "compile", _INFERENCE_COMPILE, device, megapixels)


def compile_training(setting: bool | str, device: torch.device, steps: int, precision: str = "32-true") -> bool:
    """``auto``: compile when the run's steps save more time than a compilation costs. Never on a CPU under mixed
    precision (Lightning's ``precision``): torch 2.14's compiled CPU step under bf16 autocast gave non-finite
    gradients in the first layer of the full network (32 channels, 5 blocks; finite eager, and equal to eager's
    compiled in fp32), which trained experiment=gpu_fast trainer=cpu into NaN."""
    wanted = _compile(setting, "model.compile", _TRAINING_COMPILE, device, steps)
    if wanted and device.type == "cpu" and "mixed" in precision:
        logging.getLogger(__name__).warning(
            "model.compile=%s: not on a CPU under %s (torch's compiled step gives non-finite gradients there); "
            "training eagerly (trainer.precision=32 compiles)",
            setting,
            precision,
        )
        return False
    return wanted


def compile_mode(device: torch.device, mode: str = "auto") -> str:
    """torch.compile's mode; ``auto``: CUDA graphs on CUDA (a training run's one crop size, a folder's photo
    size: one graph replayed instead of ~50 kernel launches per network pass; 1024 px inference with the
    sub-pixel layers and channels_last 2.91 -> 2.42 ms on an H200), inductor's default elsewhere."""
    if mode != "auto":
        return mode
    return "reduce-overhead" if device.type == "cuda" else "default"


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled graphs and kernels, reused by later runs: ``TORCHINDUCTOR_CACHE_DIR``
    if set, else ``nst-ff/inductor`` in the user's cache folder (inductor's own default is under
    /tmp, emptied at every boot)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nst-ff" / "inductor"
    return Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default)))


def compiled(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """``torch.compile(fn, **options)`` with the cache kept between runs."""
    compile_cache_dir()
    if not torch.cuda.is_available():
        # A CUDA build of torch (pip's default) logs "No CUDA runtime is found" when inductor looks for its
        # C++ toolchain on a machine without a GPU: true, and of no concern to code compiled for the CPU.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(fn, **options)
