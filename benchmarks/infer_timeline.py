"""Where a whole infer.py process spends its time: infer.py run in this process as the command line would run it,
with the time at which each stage ends, from this script's first line.

    python benchmarks/infer_timeline.py [--json timeline.json] -- model=starry_night input=photos/ output=styled/

The stages: importing torch, then the rest of nst-ff's command (Hydra, Pillow...), the options and the model
file read, the model put on the device (the Stylizer built: on CUDA the context and the weights), the first
batch of photos decoded, the first batch stylised (the device's first-call costs: cudnn's libraries and plans,
kernels loaded, a compilation), every photo written. What the interpreter's start and its exit take lies
outside: a caller that times the whole command (benchmarks/gpu_probe.py) has it as its wall time less the last
mark.
"""

from __future__ import annotations

import time

START = time.perf_counter()
MARKS: dict[str, float] = {}


def mark(stage: str) -> None:
    MARKS.setdefault(stage, round(time.perf_counter() - START, 3))


import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

mark("torch imported")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nst_ff.infer  # noqa: E402
from benchmarks.report import trace_without_inductor  # noqa: E402
from nst_ff.cli import infer  # noqa: E402
from nst_ff.stylize import Stylizer  # noqa: E402

mark("nst-ff imported")


def instrument() -> None:
    """Marks around the Stylizer's construction, its first batch and the folder's photos."""
    build, stylize_batch, stylize_files = Stylizer.__init__, Stylizer.stylize_batch, nst_ff.infer.stylize_files

    def built(self: Stylizer, *args: Any, **kwargs: Any) -> None:
        mark("options and model file read")
        build(self, *args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        mark("model on the device")

    def first_batch(self: Stylizer, images: torch.Tensor, **options: Any) -> torch.Tensor:
        mark("first batch decoded")
        out = stylize_batch(self, images, **options)
        if "first batch stylised" not in MARKS and out.is_cuda:
            torch.cuda.synchronize(out.device)  # once: the first batch's device time is what this mark is for
        mark("first batch stylised")
        return out

    def files(*args: Any, **kwargs: Any) -> int:
        written = stylize_files(*args, **kwargs)
        mark("photos written")
        return written

    Stylizer.__init__, Stylizer.stylize_batch, nst_ff.infer.stylize_files = built, first_batch, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the marks here as well")
    parser.add_argument("--trace-only", action="store_true", help="compile without building kernels (CPU smoke runs)")
    parser.add_argument("overrides", nargs="*", help="infer.py's options, after --")
    args = parser.parse_args()
    if args.trace_only:
        trace_without_inductor()
    instrument()
    sys.argv = ["infer.py", *args.overrides]
    status = 0
    try:
        infer()
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else 1
    finally:
        mark("command returned")
        print("timeline (s from the start): " + ", ".join(f"{k} {v}" for k, v in MARKS.items()), file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps(MARKS, indent=1) + "\n")
    sys.exit(status)


if __name__ == "__main__":
    main()
