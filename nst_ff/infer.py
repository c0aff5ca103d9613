"""The infer.py command: stylise photos, videos and folders with a model, never losing data on bad input."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from nst_ff.device import resolve_device
from nst_ff.errors import UserError
from nst_ff.execution import batch_pixels, compile_inference
from nst_ff.export import load_model, resolve_model, shipped_models
from nst_ff.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    Picture,
    find_images,
    keeps_alpha,
    read_picture,
    to_float,
    to_uint8,
    write_picture,
)
from nst_ff.media import READ_ONLY_VIDEO_EXTENSIONS, VIDEO_EXTENSIONS, crf_mistake, is_video, output_suffix
from nst_ff.paths import models_dir
from nst_ff.pipeline import Writer, batched, read_ahead
from nst_ff.stylize import Stylizer

# Speed classes by arithmetic per 1024x1024 image, which sets CPU time (measured on 2 AVX-512 cores:
# full 322 GFLOP ~0.4 s bf16, fast 47 GFLOP ~0.1 s; benchmarks/bench_cpu.py).
FAST_GFLOP = 100
# Videos are stylised as videos, beside photos in folder runs.
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS + READ_ONLY_VIDEO_EXTENSIONS
WRITABLE_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS


def gflop_per_megapixel(net: torch.nn.Module, size: int = 64) -> float:
    """Convolution arithmetic (2 x multiply-adds) for a 1024x1024 image, counted on a small one."""
    flop = 0

    def count(conv: torch.nn.Conv2d, _: object, out: torch.Tensor) -> None:
        nonlocal flop
        flop += 2 * out.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return flop * (1024 / size) ** 2 / 1e9


def fine_tuned(meta: dict[str, Any]) -> bool:
    """Whether the model's last run started from another model's weights (its steps are not all it saw)."""
    config = meta.get("config")
    return isinstance(config, dict) and bool((config.get("model") or {}).get("init_from"))


def list_models() -> list[str]:
    """One line per model that can be named (``shipped_models``): its speed class and arithmetic per
    1024x1024, training steps (+N: N steps on top of another model's weights, ``model.init_from``), file
    size; then where to put more."""
    lines, first_of_name = [], {}
    for path in shipped_models():
        if path.stem in first_of_name:  # resolve_model takes the first: this one is used only by its path
            lines.append(f"{path.stem:20s} by path only (the name is {first_of_name[path.stem]})  {path}")
            continue
        first_of_name[path.stem] = path
        if path.suffix == ".onnx":  # its metadata needs onnxruntime to read: listing works without it
            lines.append(f"{path.stem:20s} ONNX export  {path.stat().st_size / 2**20:4.1f} MB  {path}")
            continue
        try:
            net, meta = load_model(path)
        except UserError as error:  # one broken file in the models folder does not hide the others
            lines.append(f"{path.stem:20s} unreadable: {error}")
            continue
        gflop = gflop_per_megapixel(net)
        speed = "fast" if gflop <= FAST_GFLOP else "full"
        steps = f"{'+' if fine_tuned(meta) else ''}{meta.get('steps', '?')}"
        lines.append(
            f"{path.stem:20s} {speed:4s} {gflop:4.0f} GFLOP at 1024x1024  {steps:>6} steps  "
            f"{path.stat().st_size / 2**20:4.1f} MB  {path}"
        )
    lines.append(
        "(+N steps: trained N steps from another model's weights. To name your own models, put .safetensors or "
        f".onnx files in {models_dir()}; NST_FF_HOME moves it)"
    )
    return lines


# Written into every output folder of a folder run, so that a later run over a folder that contains it (e.g.
# output=photos/styled, then input=photos) does not stylise the stylised images again.
OUTPUT_MARKER = ".nst-ff-output"


def _is_output(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in an output folder (a marked one below ``root``; ``root`` itself is the input the user
    chose, e.g. an earlier output to stylise again)."""
    return any(
        (folder / OUTPUT_MARKER).is_file() for folder in path.parents if folder.is_relative_to(root) and folder != root
    )


def folder_target(folder: Path, output: Path | None, model_name: str) -> Path:
    """The output folder of a folder run: ``output``, or ``<folder>_<model>`` beside it (``.`` works too)."""
    folder = folder.resolve()
    return output or folder.with_name(f"{folder.name}_{model_name}")


def mark_output_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / OUTPUT_MARKER).touch()
    except OSError as error:
        reason = "a file is there" if folder.is_file() else error.strerror  # not "File exists"
        raise UserError(f"{folder}: cannot create the output folder ({reason}); choose another output") from None


def _output_kind(source: Path) -> tuple[str, tuple[str, ...]]:
    """What ``source``'s output is ("a video" or "an image") and the file types it may be written as."""
    return ("a video", VIDEO_EXTENSIONS) if is_video(source) else ("an image", IMAGE_EXTENSIONS)


def plan(inputs: list[Path], output: Path | None, model_name: str) -> list[tuple[Path, Path]]:
    """(input, output) file pairs. A folder keeps its relative tree under the output folder; earlier output
    folders inside it, and this run's own output folder, are not inputs."""
    single_file = len(inputs) == 1 and inputs[0].is_file()
    # An existing folder is one whatever its name ends with (photos.jpg/). Types FFmpeg reads but this project
    # does not write (.m4v, .mpg) are not outputs.
    output_file = output is not None and output.suffix.lower() in WRITABLE_EXTENSIONS and not output.is_dir()
    if single_file and output is not None and output.suffix and not output_file and not output.exists():
        # Before: o.pdf became a folder holding x_<model>.jpg; x.m4v failed after the model had loaded.
        kind, extensions = _output_kind(inputs[0])
        raise UserError(
            f"{output}: not {kind} file type written here, for the output of {inputs[0]}; end the name with one of "
            f"{', '.join(extensions)} (or make the folder first)"
        )
    if single_file and (output is None or output_file):
        source = inputs[0]
        if output is not None and is_video(source) != is_video(output):
            kind, extensions = _output_kind(source)
            raise UserError(f"{output}: the output of {source} must be {kind} file ({', '.join(extensions)})")
        if output is not None and output.resolve() == source.resolve():
            raise UserError(f"output={output}: is the input; choose another output so inputs are never overwritten")
        return [(source, output or source.with_name(f"{source.stem}_{model_name}{output_suffix(source)}"))]
    if output_file:
        raise UserError(f"{output}: a folder or several inputs need an output folder, not a file name")
    pairs = []
    for source in inputs:
        if source.is_dir():
            target = folder_target(source, output, model_name)
            if target.resolve() == source.resolve():
                raise UserError(f"{target}: is the input folder; choose another output so inputs are never overwritten")
            # This run's output folder inside the input holds no inputs; one above the input holds them all.
            inside = target.resolve().is_relative_to(source.resolve())
            pairs += [
                (f, (target / f.relative_to(source)).with_suffix(output_suffix(f)))
                for f in find_images(source, MEDIA_EXTENSIONS)
                if not (inside and f.resolve().is_relative_to(target.resolve())) and not _is_output(f, source)
            ]
        else:
            target = output or source.parent
            pairs.append((source, target / f"{source.stem}_{model_name}{output_suffix(source)}"))
    return pairs


def run(cfg: dict) -> int:
    """Returns the exit status: 0 when every input was written or kept, 1 when some failed."""
    if cfg.get("list"):
        print("\n".join(list_models()))
        return 0
    model_path = resolve_model(str(cfg["model"]))
    raw_inputs = cfg["input"] if isinstance(cfg["input"], list) else [cfg["input"]]
    inputs = [Path(str(p)) for p in raw_inputs]
    for source in inputs:
        if not source.exists():
            raise UserError(f"{source}: no such file or folder")
    output = Path(str(cfg["output"])) if cfg.get("output") else None
    pairs = plan(inputs, output, model_path.stem)
    if not pairs:
        found = ", ".join(MEDIA_EXTENSIONS)
        raise UserError(f"{', '.join(map(str, inputs))}: no images or videos found ({found})")
    for target in (target for source, target in pairs if is_video(source)):
        if mistake := crf_mistake(cfg["video"]["crf"], target):  # an option mistake: before the model loads
            raise UserError(mistake)
    net, _ = load_model(model_path)
    if model_path.suffix.lower() == ".onnx":  # onnxruntime runs it as exported
        settings = ("precision", "compile", "tile_above")
        ignored = [f"{key}={cfg[key]}" for key in settings if cfg[key] not in ("auto", "fp32", False)]
        if ignored:
            print(
                f"note: {model_path.name} runs in onnxruntime, in fp32, on whole images: {' and '.join(ignored)} "
                "left aside",
                file=sys.stderr,
            )
    for source in inputs:
        if source.is_dir():
            mark_output_folder(folder_target(source, output, model_path.stem))
    input_files = {source.resolve() for source, _ in pairs}
    failures, todo, kept = [], [], []
    claimed: dict[Path, Path] = {}  # output -> the input it is written from
    for source, target in pairs:
        first = claimed.get(target.resolve())
        if first == source.resolve():  # one file given twice: stylised once
            continue
        if first is not None:  # files of one name from several inputs: the first keeps the output
            failures.append(f"{target}: already the output of {first}; give {source} its own output (another run)")
            continue
        claimed[target.resolve()] = source.resolve()
        if target.resolve() in input_files:
            failures.append(f"{target}: is an input; choose another output so inputs are never overwritten")
        elif target.is_dir():  # before: "kept" without overwrite=true, as if it were an earlier output
            failures.append(f"{target}: is a folder, where {source}'s output goes; move it or choose another output")
        elif target.exists() and not cfg["overwrite"]:
            kept.append(target)
        else:
            todo.append((source, target))
    if len(kept) > 3:  # one line for many: a folder run again after Ctrl-C keeps what the first one wrote
        print(f"kept {len(kept)} outputs that exist, e.g. {kept[0]} (overwrite=true replaces them)")
    else:
        for target in kept:
            print(f"kept {target} (exists; overwrite=true replaces it)")
    device = resolve_device(cfg["device"])
    stylizer = Stylizer(
        net,
        device=str(device),
        precision=cfg["precision"],
        compile=compile_inference(cfg["compile"], device, megapixels([source for source, _ in todo])),
        tile_above=cfg["tile_above"],
        tile_size=cfg["tile_size"],
        tile_overlap=cfg["tile_overlap"],
    )
    options = {key: cfg[key] for key in ("strength", "preserve_color", "max_size")}
    start = time.perf_counter()
    images = [(source, target) for source, target in todo if not is_video(source)]
    written = stylize_files(stylizer, images, options, failures)
    if written > 1:
        seconds = time.perf_counter() - start
        print(f"{written} image(s) in {seconds:.1f} s ({written / seconds:.1f} images/s)", file=sys.stderr)
    videos = [(source, target) for source, target in todo if is_video(source)]
    if videos:
        from nst_ff.video import VideoError, stylize_video  # PyAV (0.2 s to import) only for video jobs

        stylize_frames = partial(stylizer.stylize_batch, **options)
    for source, target in videos:
        try:
            frames = stylize_video(source, target, stylize_frames, device=stylizer.device, **cfg["video"])
            print(f"wrote {target} ({frames} frames)")
        except VideoError as error:
            failures.append(str(error))
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    if failures and len(pairs) > 1:  # one file's own line says it all
        print(f"{len(failures)} of {len(pairs)} file(s) failed", file=sys.stderr)
    return 1 if failures else 0


def megapixels(files: list[Path]) -> float:
    """The pixels of ``files`` (a video's: all its frames) in millions, from their headers (unreadable files
    count nothing)."""

    def pixels(path: Path) -> float:
        try:
            if is_video(path):
                from nst_ff.video import video_megapixels

                return video_megapixels(path) * 1e6
            with Image.open(path) as image:
                return image.width * image.height
        except Exception:  # any failure: the file is reported when it is read for real
            return 0

    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(pixels, files)) / 1e6


def io_threads(device: torch.device) -> int:
    """Threads that decode and, as many again, that encode photos: on CUDA enough to keep the GPU fed; on a
    CPU the network needs the cores."""
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 2


def read_hwc(path: Path, pin_memory: bool = False) -> Picture:
    """A photo's 8-bit values as (H, W, 3), the layout files and encoders use (the decoded memory itself, which
    ``to_tensor`` keeps in that order; the device transposes), page-locked with ``pin_memory`` for asynchronous
    copies to a GPU."""
    picture = read_picture(path, torch.uint8)
    hwc = picture.rgb.permute(1, 2, 0)
    return Picture(hwc.pin_memory() if pin_memory else hwc, picture.alpha)


def stylize_files(stylizer: Stylizer, pairs: list[tuple[Path, Path]], options: dict, failures: list[str]) -> int:
    """Stylise ``pairs`` of (input, output) files; returns how many were written, adds failures.

    Files are decoded to uint8 on reader threads (into pinned memory for CUDA), photos of one size
    are stylised together in batches (``batch_pixels``), results go back as uint8 and are encoded on
    writer threads, all while the network works on the next batch."""
    device = stylizer.device
    cuda = device.type == "cuda"
    threads = io_threads(device)
    budget = batch_pixels(device)
    progress = tqdm(total=len(pairs), unit="image", disable=len(pairs) < 2, file=sys.stderr)

    def read(pair: tuple[Path, Path]) -> Picture:
        return read_hwc(pair[0], pin_memory=cuda)

    def write(target: Path, hwc: torch.Tensor, alpha: torch.Tensor | None, ready: torch.cuda.Event | None) -> None:
        if ready is not None:
            ready.synchronize()
        write_picture(target, hwc.permute(2, 0, 1), alpha)
        progress.write(f"wrote {target}")
        # (read_hwc's 8-bit alpha: 255 is opaque) Before: dropped without a word.
        if alpha is not None and not keeps_alpha(target) and bool((alpha < 255).any()):
            progress.write(f"note: {target}: transparency dropped ({target.suffix} has none; a .png output keeps it)")

    def done(target: Path, future: Future) -> None:
        progress.update()
        if isinstance(future.exception(), ImageError):
            failures.append(str(future.exception()))

    def batch_size(element: tuple[tuple[Path, Path], Picture]) -> int:
        height, width, _ = element[1].rgb.shape
        return max(1, budget // (height * width))

    read_ok = (pair for pair in read_ahead(pairs, read, threads, 4 * threads) if not _failed(pair, failures, progress))
    futures = []
    # The writer waits for its files, then the bar closes: also when Ctrl-C stops the run, before saying so.
    with progress, Writer(threads, 4 * threads) as writer:
        for batch in batched(read_ok, key=lambda p: p[1].rgb.shape, size=batch_size):
            images = torch.stack([picture.rgb.to(device, non_blocking=True) for _, picture in batch])
            out = stylizer.stylize_batch(to_float(images.permute(0, 3, 1, 2)), **options)
            out = to_uint8(out).permute(0, 2, 3, 1)
            host = torch.empty(out.shape, dtype=torch.uint8, pin_memory=cuda).copy_(out, non_blocking=cuda)
            ready = torch.cuda.Event() if cuda else None
            if ready is not None:
                ready.record()
            for ((_, target), picture), hwc in zip(batch, host, strict=True):
                future = writer.submit(write, target, hwc, picture.alpha, ready)
                future.add_done_callback(lambda f, target=target: done(target, f))
                futures.append(future)
    for future in futures:
        if future.exception() is not None and not isinstance(future.exception(), ImageError):
            raise future.exception()
    return sum(future.exception() is None for future in futures)


def _failed(pair: tuple[tuple[Path, Path], Picture | Exception], failures: list[str], progress: tqdm) -> bool:
    """Record a failed read (one line per file); other exceptions are bugs and propagate."""
    _, result = pair
    if isinstance(result, ImageError):
        failures.append(str(result))
        progress.update()
        return True
    if isinstance(result, Exception):
        raise result
    return False
