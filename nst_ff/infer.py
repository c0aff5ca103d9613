"""The infer.py command: stylise files and folders with a model, never losing data on bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm import tqdm

from nst_ff.errors import UserError
from nst_ff.export import SHIPPED, load_model, resolve_model
from nst_ff.images import IMAGE_EXTENSIONS, ImageError, find_images, read_picture, write_picture
from nst_ff.stylize import Stylizer

# Speed classes by arithmetic per 1024x1024 image, which sets CPU time (measured on 2 AVX-512 cores:
# full 322 GFLOP ~0.6 s bf16, fast 47 GFLOP ~0.2 s; benchmarks/bench_cpu.py).
FAST_GFLOP = 100


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


def list_models() -> list[str]:
    """One line per shipped model: training steps, file size, arithmetic per 1024x1024 and speed class."""
    lines = []
    for path in sorted(SHIPPED.glob("*.safetensors")):
        net, meta = load_model(path)
        gflop = gflop_per_megapixel(net)
        speed = "fast" if gflop <= FAST_GFLOP else "full"
        lines.append(
            f"{path.stem:20s} {speed:4s} {gflop:4.0f} GFLOP at 1024x1024  {meta.get('steps', '?'):>5} steps  "
            f"{path.stat().st_size / 2**20:4.1f} MB  {path}"
        )
    return lines


def plan(inputs: list[Path], output: Path | None, model_name: str) -> list[tuple[Path, Path]]:
    """(input, output) file pairs. A folder keeps its relative tree under the output folder."""
    single_file = len(inputs) == 1 and inputs[0].is_file()
    if single_file and (output is None or output.suffix.lower() in IMAGE_EXTENSIONS):
        source = inputs[0]
        return [(source, output or source.with_name(f"{source.stem}_{model_name}{source.suffix}"))]
    if output is not None and output.suffix.lower() in IMAGE_EXTENSIONS:
        raise UserError(f"{output}: several inputs need an output folder, not an image file name")
    pairs = []
    for source in inputs:
        if source.is_dir():
            target = output or source.with_name(f"{source.name}_{model_name}")
            pairs += [(f, target / f.relative_to(source)) for f in find_images(source)]
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
        raise UserError(f"{', '.join(map(str, inputs))}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
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
