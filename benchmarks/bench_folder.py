"""A folder run's images/s, split into its two halves: infer.py's ``stylize_files`` over JPEGs with the
model, and with an identity network in its place (the host side alone: decoding, copies to and from the
device, encoding, atomic writes). Whichever is slower bounds a folder run. Then the host side's stages alone
(decoding; encoding and writing) at 1, 2, 4... threads: which one binds, and whether more threads help.

    python benchmarks/bench_folder.py [--count 100] [--size 1024] [--model starry_night] [--device auto]
        [--compile] [--json out.json]

Each configuration runs over the folder twice in this process; the second (warm: cudnn autotuned,
compiled, allocators grown) is the figure, the first is printed beside it.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import print_report, run_main  # noqa: E402
from nst_ff.export import load_model, resolve_model  # noqa: E402
from nst_ff.images import to_pil, write_picture  # noqa: E402
from nst_ff.infer import io_threads, read_hwc, stylize_files  # noqa: E402
from nst_ff.stylize import Stylizer  # noqa: E402


def make_photos(folder: Path, count: int, size: int) -> None:
    """``count`` JPEGs of ``size``x``size`` px cut from the bundled photos and paintings (varied content)."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((ROOT / "assets" / "samples").glob("*.jpg")) + sorted((ROOT / "assets" / "styles").glob("*.jpg"))
    images = [Image.open(p).convert("RGB") for p in sources]

    def make(i: int) -> None:
        image = images[i % len(images)]
        side = min(image.size) * (0.6 + 0.4 * ((i * 7919) % 100) / 100)
        left = (image.width - side) * ((i * 104729) % 97) / 97
        top = (image.height - side) * ((i * 15485863) % 89) / 89
        crop = image.crop((round(left), round(top), round(left + side), round(top + side)))
        if i % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.jpg", quality=90)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make, range(count)))


def folder_images_per_s(stylizer: Stylizer, photos: Path, out: Path) -> tuple[float, float]:
    """(first run, second run) images/s of ``stylize_files`` over every JPEG in ``photos``."""
    pairs = [(p, out / p.name) for p in sorted(photos.glob("*.jpg"))]
    rates = []
    for _ in range(2):
        failures: list[str] = []
        start = time.perf_counter()
        written = stylize_files(stylizer, pairs, {"strength": 1.0, "preserve_color": False, "max_size": None}, failures)
        if stylizer.device.type == "cuda":
            torch.cuda.synchronize()
        if failures or written != len(pairs):
            raise RuntimeError(f"{written} of {len(pairs)} written: {failures[:3]}")
        rates.append(written / (time.perf_counter() - start))
    return rates[0], rates[1]


def host_stage_rates(photos: Path, out: Path, threads: int, pin_memory: bool) -> dict[str, float]:
    """images/s of the host side's two stages alone, each on ``threads`` threads as in ``stylize_files``:
    decoding into (pinned) memory, and encoding with atomic writes (and encoding alone, into memory: the gap
    is the disk's, its fsync per file). Which one, if any, bounds a folder run."""
    files = sorted(photos.glob("*.jpg"))

    def encode(hwc: torch.Tensor) -> None:  # write_picture's encoding of a JPEG, without the file
        to_pil(hwc.permute(2, 0, 1)).save(io.BytesIO(), format="JPEG", quality=95)

    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        pictures = list(pool.map(lambda path: read_hwc(path, pin_memory), files))
        read = len(files) / (time.perf_counter() - start)
        start = time.perf_counter()
        list(pool.map(lambda picture: encode(picture.rgb), pictures))
        encoded = len(files) / (time.perf_counter() - start)
        start = time.perf_counter()
        list(pool.map(lambda path, hwc: write_picture(out / path.name, hwc.rgb.permute(2, 0, 1)), files, pictures))
        write = len(files) / (time.perf_counter() - start)
    return {
        "threads": threads,
        "decode images/s": round(read, 1),
        "encode images/s": round(encoded, 1),
        "encode and write images/s": round(write, 1),
    }


def stage_table(photos: Path, out: Path, device: torch.device) -> list[dict[str, float]]:
    """``host_stage_rates`` at 1, 2, 4, ... threads up to twice infer's count for ``device``."""
    counts = [2**i for i in range(8) if 2**i <= 2 * io_threads(device)]
    return [host_stage_rates(photos, out, threads, device.type == "cuda") for threads in counts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--model", default="starry_night")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also the model compiled (torch.compile)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.count < 1 or args.size < 64:
        parser.error("--count must be 1 or more and --size 64 or more")

    net, _ = load_model(resolve_model(args.model))
    configs = {"host side alone (identity network)": Stylizer(torch.nn.Identity(), device=args.device)}
    configs[f"{args.model} eager"] = Stylizer(net, device=args.device)
    if args.compile:
        configs[f"{args.model} compiled"] = Stylizer(net, device=args.device, compile=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        photos = Path(work) / "photos"
        make_photos(photos, args.count, args.size)
        for name, stylizer in configs.items():
            first, warm = folder_images_per_s(stylizer, photos, Path(work) / "styled")
            rows.append({"configuration": name, "images/s": warm, "images/s first run": first})
            print(rows[-1], flush=True)
        stages = stage_table(photos, Path(work) / "stages", stylizer.device)
    extra = {
        "photos": f"{args.count} JPEGs of {args.size}x{args.size}",
        "device": str(stylizer.device),
        "infer.py threads": io_threads(stylizer.device),
        "host stages": stages,
    }
    print_report("infer.py folder run: the network against the host side", rows, extra, args.json)


if __name__ == "__main__":
    run_main(main)
