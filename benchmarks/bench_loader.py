"""Training input pipeline alone: 256 px crops per second from a folder of JPEGs, delivered as float
images on the training device (what a training step receives), for several worker counts.

    python benchmarks/bench_loader.py [--data ../shared/data/content/train] [--workers 1 2] [--device auto]

The loader is ``PhotoDataModule``'s: workers decode, resize, crop and flip in uint8; the batch goes to
the device (pinned memory on CUDA) and becomes float there. The first batches (worker start-up) are
not counted.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import print_report, run_main  # noqa: E402
from nst_ff.data import PhotoDataModule, auto_workers  # noqa: E402
from nst_ff.device import resolve_device  # noqa: E402


def images_per_sec(args: argparse.Namespace, workers: int, device: torch.device) -> float:
    data = PhotoDataModule(
        root=args.data,
        val_root=str(ROOT / "assets" / "samples"),
        image_size=args.size,
        batch_size=args.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        verify=False,
    )
    data.setup("fit")
    loader = data.train_dataloader()
    wanted = args.warmup + args.batches
    # Cycle epochs as training does (a small folder ends an epoch every few batches).
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    count, start = 0, 0.0
    for i, batch in enumerate(itertools.islice(batches, wanted)):
        if i == args.warmup:
            sync()
            start, count = time.perf_counter(), 0
        images = data.on_after_batch_transfer(batch.to(device, non_blocking=True), 0)
        count += len(images)
    sync()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = ROOT.parent / "shared" / "data" / "content" / "train"
    parser.add_argument("--data", default=str(shared if shared.is_dir() else ROOT / "assets" / "samples"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default: 1 and the automatic count)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    counts = args.workers or sorted({1, auto_workers(device)})
    rows = []
    for workers in counts:
        rate = images_per_sec(args, workers, device)
        rows.append({"workers": workers, "images/s": rate, "images/s per worker": rate / max(workers, 1)})
    extra = {
        "what": f"{args.size} px crops, batch {args.batch_size}, uint8 from the workers, float on {device}",
        "data": args.data,
        "runs": f"{args.batches} batches after {args.warmup} warm-up",
    }
    print_report("training input pipeline", rows, extra, args.json)


if __name__ == "__main__":
    run_main(main)
