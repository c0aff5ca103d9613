r"""Video stylisation speed (frames/s end to end) and peak memory against clip length.

    python benchmarks/bench_video.py --model starry_night --heights 720 1080 --seconds 2
    python benchmarks/bench_video.py --model starry_night --heights 1080 --seconds 10 180 --max-size 128 \
        --preset ultrafast --skip-parts          # memory: flat from 10 s to 3 min?

Each run is its own process (its peak RSS is its own) on a generated 25 frames/s H.264 clip panning over a
bundled photo. Prints, per size and length: end-to-end frames/s of ``nst_ff.video.stylize_video`` (decode,
stylise, encode, overlapped), and, unless ``--skip-parts``, the parts alone: the network on batches of
frames, and decoding + encoding with no network (an identity "model"); then the peak RSS of the whole run.
``--max-size`` lets the network see smaller frames (the output is scaled back), which makes a long 1080p
clip feasible on a CPU while decoding, scaling and encoding still handle every full-size frame.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import median_seconds, print_report, run_main  # noqa: E402
from nst_ff.export import load_model, resolve_model  # noqa: E402
from nst_ff.images import load_image, resize  # noqa: E402
from nst_ff.stylize import Stylizer  # noqa: E402
from nst_ff.video import stylize_video  # noqa: E402

FPS = 25


def make_clip(path: Path, height: int, seconds: int) -> None:
    """A 16:9 H.264 clip panning 3 px per frame over a bundled photo (wrapping around), made quickly."""
    width = round(height * 16 / 9 / 2) * 2
    photo = load_image(ROOT / "assets" / "samples" / "rocket.jpg")[0]
    photo = resize(photo, (height, width * 2)).mul(255).round().byte().permute(1, 2, 0).numpy()
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "20"}
        for t in range(seconds * FPS):
            left = (3 * t) % width
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo[:, left : left + width]), format="rgb24")
            frame.pts = t
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def child(args: argparse.Namespace) -> None:
    stylizer = Stylizer(load_model(resolve_model(args.model))[0], device=args.device, compile=args.compile)
    stylize = partial(stylizer.stylize_batch, max_size=args.max_size)
    options = {"batch_size": args.batch_size, "preset": args.preset, "device": stylizer.device, "progress": False}
    result: dict[str, float] = {}
    if not args.skip_parts:
        with av.open(args.clip) as container:
            decoded = container.decode(video=0)
            frames = [next(decoded).to_ndarray(format="rgb24") for _ in range(args.batch_size)]
        batch = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255).to(stylizer.device)
        sync = torch.cuda.synchronize if stylizer.device.type == "cuda" else (lambda: None)
        seconds = median_seconds(lambda: stylize(batch), 2 if args.compile else 1, 3, sync)
        result["network_fps"] = args.batch_size / seconds
        start = time.perf_counter()
        count = stylize_video(args.clip, args.out, lambda x: x, **options)
        result["codec_fps"] = count / (time.perf_counter() - start)
    start = time.perf_counter()
    count = stylize_video(args.clip, args.out, stylize, **options)
    result["end_to_end_fps"] = count / (time.perf_counter() - start)
    result["frames"] = count
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="starry_night", help="shipped model name or model file")
    parser.add_argument("--heights", type=int, nargs="+", default=[720, 1080])
    parser.add_argument("--seconds", type=int, nargs="+", default=[2])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-size", type=int, help="long side the network sees (default: full size)")
    parser.add_argument("--preset", default="medium", help="H.264 encoder preset")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (infer's compile=true)")
    parser.add_argument("--skip-parts", action="store_true", help="only the end-to-end run")
    parser.add_argument("--json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for height in args.heights:
            for seconds in args.seconds:
                clip = Path(tmp) / f"clip_{height}p_{seconds}s.mp4"
                make_clip(clip, height, seconds)
                command = [sys.executable, __file__, "--child", "--clip", str(clip), "--out", str(clip) + ".out.mp4"]
                for flag in ("model", "batch_size", "max_size", "preset", "device"):
                    if getattr(args, flag) is not None:
                        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
                command += ["--skip-parts"] if args.skip_parts else []
                command += ["--compile"] if args.compile else []
                output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                result = json.loads(output.split("RESULT ", 1)[1])
                rows.append({"size": f"{height}p", "seconds": seconds, **result})
                print(rows[-1], flush=True)
    extra = {
        "model": args.model,
        "options": f"batch {args.batch_size}, max_size {args.max_size}, preset {args.preset}, device {args.device}, "
        f"compile {args.compile}",
    }
    print_report("Video stylisation: frames/s and peak memory", rows, extra, args.json)


if __name__ == "__main__":
    run_main(main)
