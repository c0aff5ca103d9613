"""Tiled stylisation against whole: how alike (PSNR) and how fast, on photos above the tiling threshold.

    python benchmarks/bench_tiling.py [--sizes 2101x2050 3000x3000 4000x3000] [--model starry_night]
        [--photos ../shared/data/content/test] [--json out.json]

Each image is a mosaic of real photos at their own scale (a big photo's texture, not an upscaled small one),
stylised whole and in tiles by the default ``Stylizer`` (the device's precision, ``tile_above=auto``). PSNR is
the tiled output's against the whole one's; time is the tiled run's, warm (median of --repeats).
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import print_report, run_main  # noqa: E402
from nst_ff.export import load_model, resolve_model  # noqa: E402
from nst_ff.images import find_images, load_image  # noqa: E402
from nst_ff.stylize import Stylizer  # noqa: E402


def mosaic(photos: list[Path], height: int, width: int) -> torch.Tensor:
    """(1, 3, height, width): ``photos`` side by side, row after row, each at its own size (cut at the edges)."""
    image = torch.zeros(3, height, width)
    top, index = 0, 0
    while top < height:
        left, row_height = 0, 0
        while left < width:
            photo = load_image(photos[index % len(photos)])[0]
            index += 1
            rows, columns = min(photo.shape[1], height - top), min(photo.shape[2], width - left)
            image[:, top : top + rows, left : left + columns] = photo[:, :rows, :columns]
            left += photo.shape[2]
            row_height = max(row_height, photo.shape[1])
        top += row_height
    return image[None]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def width_by_height(size: str) -> str:
    """``--sizes``' values, checked (before: "not enough values to unpack" after the photos and model loaded)."""
    if not re.fullmatch(r"[1-9]\d*x[1-9]\d*", size):
        raise argparse.ArgumentTypeError(f"{size}: give WIDTHxHEIGHT in pixels, e.g. 3000x2000")
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", nargs="+", type=width_by_height, default=["2101x2050", "3000x3000", "4000x3000"], help="WIDTHxHEIGHT"
    )
    parser.add_argument("--model", default="starry_night")
    parser.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "content" / "test"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    photos = find_images(args.photos)
    net, _ = load_model(resolve_model(args.model))
    whole = Stylizer(net, device=args.device, tile_above=10**12)
    tiled = Stylizer(net, device=args.device)
    rows = []
    for size in args.sizes:
        width, height = map(int, size.split("x"))
        image = mosaic(photos, height, width)
        reference = whole(image)
        tiled(image)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = tiled(image)
            times.append(time.perf_counter() - start)
        rows.append(
            {
                "size": size,
                "tiled vs whole PSNR dB": round(psnr(out, reference), 1),
                "tiled s": round(statistics.median(times), 2),
            }
        )
        print(rows[-1], flush=True)
    extra = {"model": args.model, "precision": str(tiled.dtype), "tile_above": tiled.tile_above, "photos": args.photos}
    print_report("Tiled against whole", rows, extra, args.json)


if __name__ == "__main__":
    run_main(main)
