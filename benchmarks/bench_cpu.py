"""CPU inference: pytorch/examples' reference execution, the full network and the light ones under each
execution option, one image, medians, all in one process.

    python benchmarks/bench_cpu.py [--size 1024] [--repeats 7] [--json benchmarks/results/cpu.json]

The reference is pytorch/examples' fast_neural_style run: the full Johnson network with torch's
nn.InstanceNorm2d, eager fp32, NCHW, under no_grad, timed first (before anything here changes the
allocator). Every other row goes through ``nst_ff.stylize.Stylizer``, the public API. Options:

- ``fp32`` (channels_last), ``fp32 NCHW``, ``bf16`` (autocast; only where the CPU has native bf16,
  elsewhere emulated and ~10x slower), ``default``: what ``Stylizer()``/infer.py pick on this machine;
- ``compile``: ``Stylizer(compile=True)`` (inductor; its one-off compile time is printed, not timed);
- ``int8``: torch.ao FX static quantization (x86 engine, per-tensor activations calibrated on photos;
  instance norms stay float), run eagerly;
- ``onnxruntime``: the model exported by ``nst_ff.onnx``, run on onnxruntime's CPU provider.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import print_report, run_main  # noqa: E402
from nst_ff.device import cpu_has_fast_bf16  # noqa: E402
from nst_ff.export import load_model  # noqa: E402
from nst_ff.images import load_image  # noqa: E402
from nst_ff.net import InstanceNorm, TransformerNet  # noqa: E402
from nst_ff.stylize import Stylizer  # noqa: E402

FAST = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "fast.yaml"))["net"]
# Light variants measured to choose conf/model/fast.yaml (random weights: speed does not depend on them).
VARIANTS = {
    "16 ch": {"channels": 16},
    "16 ch, 3 blocks": {"channels": 16, "num_res_blocks": 3},
    "16 ch separable": {"channels": 16, "separable": True},
    "16 ch separable, 5x5 ends": {"channels": 16, "separable": True, "end_kernel": 5},
    "8 ch": {"channels": 8},
}
OPTIONS = ("fp32", "fp32 NCHW", "bf16", "default", "compile", "int8", "onnxruntime")
QUICK_OPTIONS = ("fp32", "bf16")  # for the variants


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def timings(run: Callable[[], object], warmup: int, repeats: int) -> tuple[float, float]:
    """Medians of wall time and of this process's CPU time. On a shared machine the wall time grows with
    the other jobs; the CPU time much less (on an idle machine it is ~threads x wall)."""
    for _ in range(warmup):
        run()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def reference_net(net: TransformerNet) -> nn.Module:
    """The same network and weights with torch's nn.InstanceNorm2d, as pytorch/examples builds it."""
    reference = copy.deepcopy(net).float().eval()
    for module in list(reference.modules()):
        for name, child in module.named_children():
            if isinstance(child, InstanceNorm):
                norm = nn.InstanceNorm2d(child.num_features, affine=True)
                norm.load_state_dict(child.state_dict())
                setattr(module, name, norm)
    return reference.to(memory_format=torch.contiguous_format)


def int8_net(net: TransformerNet, photos: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    body = copy.deepcopy(net.body).float().eval()
    # The quantized kernels have no instance norm: ours stays a float module between dequantize/quantize.
    qconfig = get_default_qconfig_mapping("x86").set_object_type(InstanceNorm, None)
    custom = PrepareCustomConfig().set_non_traceable_module_classes([InstanceNorm])
    prepared = prepare_fx(body, qconfig, (photos[:1],), prepare_custom_config=custom)
    with torch.no_grad():
        for photo in photos:
            prepared(photo[None])
    quantized = convert_fx(prepared)

    def run(image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(quantized(image))

    return run


def onnxruntime_net(net: TransformerNet) -> Callable[[torch.Tensor], torch.Tensor]:
    from nst_ff.onnx import OnnxNet, to_onnx  # optional: pip install 'nst-ff[onnx]'

    onnx_net = OnnxNet(to_onnx(net, {}), providers=["CPUExecutionProvider"])
    return Stylizer(onnx_net, precision="fp32")


def runner(option: str, net: TransformerNet, photos: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | str:
    """A callable for the option, or why the option does not run here."""
    if option == "fp32 NCHW":
        return Stylizer(net, precision="fp32", channels_last=False)
    if option == "fp32":
        return Stylizer(net, precision="fp32")
    if option == "bf16":
        return Stylizer(net, precision="bf16") if cpu_has_fast_bf16() else "no native bf16 on this CPU"
    if option == "default":
        return Stylizer(net)
    if option == "compile":
        return Stylizer(net, compile=True)
    if option == "int8":
        return int8_net(net, photos)
    if option == "onnxruntime":
        if importlib.util.find_spec("nst_ff.onnx") is None or importlib.util.find_spec("onnxruntime") is None:
            return "needs nst_ff.onnx and onnxruntime (pip install 'nst-ff[onnx]')"
        return onnxruntime_net(net)
    raise ValueError(option)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "checkpoints" / "starry_night.safetensors"), help="full net")
    parser.add_argument("--fast-model", default=str(ROOT / "checkpoints" / "starry_night_fast.safetensors"))
    parser.add_argument("--photo", default=str(ROOT / "assets" / "samples" / "rocket.jpg"))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    photo = load_image(args.photo)
    image = nn.functional.interpolate(photo, size=(args.size, args.size), mode="bicubic").clamp(0, 1)
    samples = sorted((ROOT / "assets" / "samples").glob("*.jpg"))
    calibration = torch.cat([nn.functional.interpolate(load_image(p), size=(192, 192), mode="area") for p in samples])
    full = load_model(args.model)[0]
    fast = load_model(args.fast_model)[0] if Path(args.fast_model).is_file() else TransformerNet(**FAST)
    nets = {"full (32 ch)": full, f"fast ({Path(args.fast_model).stem})": fast}
    torch.manual_seed(0)
    nets.update({name: TransformerNet(**VARIANTS[name]) for name in args.variants})

    # First, before any Stylizer makes glibc keep freed memory: the reference as pytorch/examples runs it.
    reference = reference_net(full)
    reference_s, reference_cpu = timings(lambda: reference(image), args.warmup, args.repeats)
    rows = [
        {
            "net": "full (32 ch)",
            "option": "reference (pytorch/examples)",
            "s/image": reference_s,
            "CPU s/image": reference_cpu,
        }
    ]
    notes: dict[str, object] = {}
    for name, net in nets.items():
        options = args.options if name in list(nets)[:2] else [o for o in QUICK_OPTIONS if o in args.options]
        fp32_out = None
        for option in options:
            start = time.perf_counter()
            run = runner(option, net, calibration)
            if isinstance(run, str):
                notes[f"{option} skipped"] = run
                continue
            out = run(image)  # the first call: compilation, kernel choice
            setup_s = time.perf_counter() - start
            seconds, cpu_seconds = timings(lambda run=run: run(image), args.warmup, args.repeats)
            fp32_out = out if option == "fp32" else fp32_out
            rows.append(
                {
                    "net": name,
                    "option": option,
                    "s/image": seconds,
                    "CPU s/image": cpu_seconds,
                    "x reference": reference_s / seconds,
                    "PSNR vs fp32 dB": psnr(out, fp32_out) if fp32_out is not None else float("nan"),
                    "first call s": setup_s,
                }
            )
            print(f"{name}, {option}: {seconds:.3f} s", file=sys.stderr, flush=True)
    rows[0].update({"x reference": 1.0, "PSNR vs fp32 dB": float("nan"), "first call s": float("nan")})
    default_dtype = Stylizer(TransformerNet(channels=4, num_res_blocks=0)).dtype
    extra = {
        "image": f"{args.size}x{args.size}, one image; median of {args.repeats} after {args.warmup} warm-up",
        "load average at the end": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "default": f"Stylizer() here: autocast {default_dtype or 'off (fp32)'}, channels_last, inference_mode, "
        "fast allocator",
        **notes,
    }
    print_report(f"CPU inference, {args.size}x{args.size}", rows, extra, args.json)


if __name__ == "__main__":
    run_main(main)
