"""The infer.py command: stylise files and folders with a model, never losing data on bad input."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

from tqdm import tqdm

from nst_ff.errors import UserError
from nst_ff.export import SHIPPED, load_model, resolve_model
from nst_ff.images import IMAGE_EXTENSIONS, ImageError, find_images, read_picture, write_picture
from nst_ff.stylize import Stylizer
from nst_ff.video import VIDEO_EXTENSIONS, VideoError, is_video, stylize_video

# Videos are stylised as videos, beside photos in folder runs.
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS


def list_models() -> list[str]:
    lines = []
    for path in sorted(SHIPPED.glob("*.safetensors")):
        _, meta = load_model(path)
        lines.append(f"{path.stem:20s} {meta.get('steps', '?')} steps, {path.stat().st_size / 2**20:.1f} MB, {path}")
    return lines


def plan(inputs: list[Path], output: Path | None, model_name: str) -> list[tuple[Path, Path]]:
    """(input, output) file pairs. A folder keeps its relative tree under the output folder."""
    single_file = len(inputs) == 1 and inputs[0].is_file()
    if single_file and (output is None or output.suffix.lower() in MEDIA_EXTENSIONS):
        source = inputs[0]
        if output is not None and is_video(source) != is_video(output):
            kind, extensions = ("video", VIDEO_EXTENSIONS) if is_video(source) else ("image", IMAGE_EXTENSIONS)
            raise UserError(f"{output}: the output of {source} must be a {kind} file ({', '.join(extensions)})")
        return [(source, output or source.with_name(f"{source.stem}_{model_name}{source.suffix}"))]
    if output is not None and output.suffix.lower() in MEDIA_EXTENSIONS:
        raise UserError(f"{output}: several inputs need an output folder, not a file name")
    pairs = []
    for source in inputs:
        if source.is_dir():
            target = output or source.with_name(f"{source.name}_{model_name}")
            pairs += [(f, target / f.relative_to(source)) for f in find_images(source, MEDIA_EXTENSIONS)]
        else:
            target = output or source.parent
            pairs.append((source, target / f"{source.stem}_{model_name}{source.suffix}"))
    return pairs


def run(cfg: dict) -> int:
    """Returns the exit status: 0 when every input was written or kept, 1 when some failed."""
    if cfg.get("list"):
        print("\n".join(list_models()) or f"no models in {SHIPPED}")
        return 0
    model_path = resolve_model(str(cfg["model"]))
    net, _ = load_model(model_path)
    if not 0 <= float(cfg["strength"]) <= 1:
        raise UserError(f"strength={cfg['strength']}: must be between 0 and 1")
    raw_inputs = cfg["input"] if isinstance(cfg["input"], list) else [cfg["input"]]
    inputs = [Path(str(p)).expanduser() for p in raw_inputs]
    for source in inputs:
        if not source.exists():
            raise UserError(f"{source}: no such file or folder")
    output = Path(str(cfg["output"])).expanduser() if cfg.get("output") else None
    pairs = plan(inputs, output, model_path.stem)
    if not pairs:
        raise UserError(f"{', '.join(map(str, inputs))}: no images or videos found ({', '.join(MEDIA_EXTENSIONS)})")
    input_files = {source.resolve() for source, _ in pairs}
    stylizer = Stylizer(
        net,
        device=cfg["device"],
        precision=cfg["precision"],
        compile=cfg["compile"],
        tile_above=cfg["tile_above"],
        tile_size=cfg["tile_size"],
        tile_overlap=cfg["tile_overlap"],
    )
    options = {"strength": cfg["strength"], "preserve_color": cfg["preserve_color"], "max_size": cfg["max_size"]}
    failures = []
    progress = tqdm(pairs, unit="file", disable=len(pairs) < 2, file=sys.stderr)
    for source, target in progress:
        if target.resolve() in input_files:
            failures.append(f"{target}: is an input; choose another output so inputs are never overwritten")
            continue
        if target.exists() and not cfg["overwrite"]:
            progress.write(f"kept {target} (exists; overwrite=true replaces it)")
            continue
        try:
            if is_video(source):
                stylize = partial(stylizer.stylize_batch, **options)
                stylize_video(source, target, stylize, device=stylizer.device, **cfg["video"])
            else:
                picture = stylizer.stylize_picture(read_picture(source), **options)
                write_picture(target, picture.rgb, picture.alpha)
            progress.write(f"wrote {target}")
        except (ImageError, VideoError) as error:
            failures.append(str(error))
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(pairs)} file(s) failed", file=sys.stderr)
    return 1 if failures else 0
