"""Inference speed and memory: the fp32 eager reference against the tuned default, same code.

    python benchmarks/bench_infer.py --model checkpoints/starry_night.safetensors

Each (configuration, size) runs in its own process so that its peak memory is its own. Prints ms per
image (median after warm-up), peak memory, the speed-up, and the PSNR of the tuned output against
the reference on a real photo.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import median_seconds, print_report, run_main  # noqa: E402
from nst_ff.export import load_model, resolve_model  # noqa: E402
from nst_ff.images import load_image  # noqa: E402
from nst_ff.net import TransformerNet  # noqa: E402
from nst_ff.stylize import Stylizer  # noqa: E402

# Every speed option off (the reference), each option alone, the Stylizer defaults (what infer.py
# uses), the defaults plus torch.compile, and an ONNX export run by onnxruntime.
ONNXRUNTIME = "onnxruntime (CPU)"
REFERENCE = {"precision": "fp32", "channels_last": False, "fast_allocator": False}
CONFIGS = {
    "fp32 eager": REFERENCE,
    "+channels_last": {**REFERENCE, "channels_last": True},
    "+fast allocator": {**REFERENCE, "fast_allocator": True},
    "+precision (auto)": {**REFERENCE, "precision": "auto"},
    "tuned (default)": {},
    "tuned + compile": {"compile": True},
    # The same network exported to ONNX (nst_ff.onnx) and run by onnxruntime on the CPU, fp32.
    ONNXRUNTIME: {},
}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def load_net(model: str | None) -> TransformerNet:
    if model:
        return load_model(resolve_model(model))[0]
    torch.manual_seed(0)
    return TransformerNet()


def child(args: argparse.Namespace) -> None:
    options = dict(CONFIGS[args.config])
    net, device = load_net(args.model), args.device
    if args.config == ONNXRUNTIME:
        from nst_ff.onnx import OnnxNet, to_onnx

        net, device = OnnxNet(to_onnx(net, {}), providers=["CPUExecutionProvider"]), "cpu"
    stylizer = Stylizer(net, device=device, **options)
    image = torch.nn.functional.interpolate(load_image(args.photo), size=(args.size, args.size), mode="bicubic")
    image = image.clamp(0, 1)
    sync = torch.cuda.synchronize if stylizer.device.type == "cuda" else (lambda: None)
    seconds = median_seconds(lambda: stylizer(image), args.warmup, args.repeats, sync)
    if stylizer.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save(stylizer(image), args.out)
    Path(args.out + ".json").write_text(json.dumps({"ms": seconds * 1000, "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", help="a shipped model's name or a model file (default: a randomly initialised TransformerNet)"
    )
    parser.add_argument("--photo", default=str(ROOT / "assets" / "samples" / "rocket.jpg"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--ablation-max", type=int, default=1024, help="larger sizes run only the reference and the tuned default"
    )
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.config, args.size = args.child[0], int(args.child[1])
        return child(args)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            configs = args.configs if size <= args.ablation_max else ["fp32 eager", "tuned (default)"]
            outputs, reference_ms = {}, None
            for config in configs:
                out = f"{tmp}/{size}_{len(outputs)}.pt"
                command = [
                    sys.executable,
                    __file__,
                    "--child",
                    config,
                    str(size),
                    "--out",
                    out,
                    "--photo",
                    args.photo,
                    "--repeats",
                    str(args.repeats),
                    "--warmup",
                    str(args.warmup),
                    "--device",
                    args.device,
                    *(["--model", args.model] if args.model else []),
                ]
                subprocess.run(command, check=True)
                result = json.loads(Path(out + ".json").read_text())
                outputs[config] = torch.load(out)
                reference_ms = reference_ms or result["ms"]
                rows.append(
                    {
                        "size": f"{size}x{size}",
                        "config": config,
                        "ms/image": result["ms"],
                        "speed-up": reference_ms / result["ms"],
                        "peak MB": result["peak_mb"],
                        "PSNR vs fp32 dB": psnr(outputs[config], outputs[configs[0]]),
                    }
                )
    tuned = Stylizer(TransformerNet(channels=4, num_res_blocks=0), device=args.device)
    extra = {
        "tuned (default)": f"{tuned.execution.describe()}, inference_mode, fast allocator",
        "model": args.model or "random init (seed 0)",
        "runs": f"median of {args.repeats} after {args.warmup} warm-up; one process per row (its own peak memory)",
    }
    print_report("inference, one image", rows, extra, args.json)


if __name__ == "__main__":
    run_main(main)
