"""The infer.py command: stylise files and folders with a model, never losing data on bad input."""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from nst_ff.errors import UserError
from nst_ff.export import load_model, resolve_model, shipped_models
from nst_ff.images import IMAGE_EXTENSIONS, ImageError, find_images, read_picture, write_picture
from nst_ff.paths import models_dir
from nst_ff.stylize import Stylizer


def list_models() -> list[str]:
    """One line per model that can be named (``shipped_models``), then where to put more."""
    lines = []
    for path in shipped_models():
        # An ONNX file's metadata needs onnxruntime to read: listing works without it.
        kind = "ONNX export" if path.suffix == ".onnx" else f"{load_model(path)[1].get('steps', '?')} steps"
        lines.append(f"{path.stem:20s} {kind}, {path.stat().st_size / 2**20:.1f} MB, {path}")
    lines.append(f"(to name your own models, put .safetensors or .onnx files in {models_dir()}; NST_FF_HOME moves it)")
    return lines


# Written into every output folder of a folder run, so that a later run over a folder that contains it (e.g.
# output=photos/styled, then input=photos) does not stylise the stylised images again.
OUTPUT_MARKER = ".nst-ff-output"


def _is_output(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in an output folder (a marked one under ``root``)."""
    return any((folder / OUTPUT_MARKER).is_file() for folder in path.parents if folder.is_relative_to(root))


def folder_target(folder: Path, output: Path | None, model_name: str) -> Path:
    """The output folder of a folder run: ``output``, or ``<folder>_<model>`` beside it (``.`` works too)."""
    folder = folder.resolve()
    return output or folder.with_name(f"{folder.name}_{model_name}")


def mark_output_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / OUTPUT_MARKER).touch()
    except OSError as error:
        raise UserError(
            f"{folder}: cannot create the output folder ({error.strerror}); choose another output"
        ) from None


def plan(inputs: list[Path], output: Path | None, model_name: str) -> list[tuple[Path, Path]]:
    """(input, output) file pairs. A folder keeps its relative tree under the output folder; earlier output
    folders inside it, and this run's own output folder, are not inputs."""
    single_file = len(inputs) == 1 and inputs[0].is_file()
    if single_file and (output is None or output.suffix.lower() in IMAGE_EXTENSIONS):
        source = inputs[0]
        return [(source, output or source.with_name(f"{source.stem}_{model_name}{source.suffix}"))]
    if output is not None and output.suffix.lower() in IMAGE_EXTENSIONS:
        raise UserError(f"{output}: several inputs need an output folder, not an image file name")
    pairs = []
    for source in inputs:
        if source.is_dir():
            target = folder_target(source, output, model_name)
            pairs += [
                (f, target / f.relative_to(source))
                for f in find_images(source)
                if not f.resolve().is_relative_to(target.resolve()) and not _is_output(f, source)
            ]
        else:
            target = output or source.parent
            pairs.append((source, target / f"{source.stem}_{model_name}{source.suffix}"))
    return pairs


def run(cfg: dict) -> int:
    """Returns the exit status: 0 when every input was written or kept, 1 when some failed."""
    if cfg.get("list"):
        print("\n".join(list_models()))
        return 0
    model_path = resolve_model(str(cfg["model"]))
    net, _ = load_model(model_path)
    raw_inputs = cfg["input"] if isinstance(cfg["input"], list) else [cfg["input"]]
    inputs = [Path(str(p)).expanduser() for p in raw_inputs]
    for source in inputs:
        if not source.exists():
            raise UserError(f"{source}: no such file or folder")
    output = Path(str(cfg["output"])).expanduser() if cfg.get("output") else None
    pairs = plan(inputs, output, model_path.stem)
    if not pairs:
        raise UserError(f"{', '.join(map(str, inputs))}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
    for source in inputs:
        if source.is_dir():
            mark_output_folder(folder_target(source, output, model_path.stem))
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
    failures = []
    progress = tqdm(pairs, unit="image", disable=len(pairs) < 2, file=sys.stderr)
    for source, target in progress:
        if target.resolve() in input_files:
            failures.append(f"{target}: is an input; choose another output so inputs are never overwritten")
            continue
        if target.exists() and not cfg["overwrite"]:
            progress.write(f"kept {target} (exists; overwrite=true replaces it)")
            continue
        try:
            picture = stylizer.stylize_picture(
                read_picture(source),
                strength=cfg["strength"],
                preserve_color=cfg["preserve_color"],
                max_size=cfg["max_size"],
            )
            write_picture(target, picture.rgb, picture.alpha)
            progress.write(f"wrote {target}")
        except ImageError as error:
            failures.append(str(error))
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(pairs)} image(s) failed", file=sys.stderr)
    return 1 if failures else 0
