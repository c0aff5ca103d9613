"""Per-image optimization (Gatys, Ecker, Bethge 2016): the pixels themselves are optimised against
the same ``PerceptualLoss`` that trains the feed-forward networks. Slow, needs no training, and the
quality reference; also the quickest way to try loss weights on one photo before a long run."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from nst_ff.color import preserve_colors
from nst_ff.device import resolve_device
from nst_ff.errors import UserError, exit_stopped
from nst_ff.files import require_writable
from nst_ff.images import long_side_size, output_format, read_picture, resize, write_picture
from nst_ff.perceptual import LossTerms, PerceptualLoss
from nst_ff.schema import INITS, OPTIMIZERS

Callback = Callable[[int, LossTerms, torch.Tensor], None]


class Stopped(Exception):
    """Ctrl-C (or SIGTERM, ``nst_ff.errors.Terminated``: ``stop``) during an optimisation: ``image`` is the
    lowest-loss image of the steps done, ``steps`` of them."""

    def __init__(self, image: torch.Tensor, steps: int, stop: KeyboardInterrupt) -> None:
        super().__init__(f"stopped after {steps} steps")
        self.image, self.steps, self.stop = image, steps, stop


def initial_image(init: str, content: torch.Tensor, style: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The starting pixels, (1, 3, H, W) like ``content``."""
    if init == "content":
        return content.clone()
    if init == "noise":
        return torch.rand(content.shape, generator=generator).to(content.device)
    if init == "style":
        return resize(style, tuple(content.shape[-2:])).to(content.device)
    raise ValueError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")


def optimize_pixels(
    loss: PerceptualLoss,
    content: torch.Tensor,
    image: torch.Tensor,
    steps: int,
    optimizer: str = "lbfgs",
    lr: float | None = None,
    callback: Callback | None = None,
    first_step: int = 0,
) -> torch.Tensor:
    """Optimise ``image`` (1, 3, H, W) for ``steps`` steps against ``loss`` with ``content``'s targets.

    ``lbfgs`` (lr 1) gets lower than ``adam`` (lr 0.02) in the same number of loss evaluations; Adam is
    lighter on memory. Pixels are clamped to [0, 1] after every step. ``callback(step, terms, image)``
    sees every step. Returns the lowest-loss image seen, so a late bad step never costs the result;
    Ctrl-C raises ``Stopped`` with it.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    targets = loss.content_targets(content)
    # Contiguous pixels get contiguous gradients, which L-BFGS flattens with .view().
    pixels = image.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
    if optimizer == "lbfgs":
        # No line search, as in Gatys et al.: measured at 256 px, the strong-Wolfe search stalled after
        # ~30 steps (the clamp moves the pixels it placed) while plain steps kept going. Tolerances off:
        # torch's are absolute and the objective below is relative, so they would stop it at once.
        opt: torch.optim.Optimizer = torch.optim.LBFGS(
            [pixels], lr=lr or 1.0, max_iter=1, history_size=50, tolerance_grad=0, tolerance_change=0
        )
    else:
        opt = torch.optim.Adam([pixels], lr=lr or 0.02)
    # The presets give losses ~1e7: optimise the loss relative to its start value, a scale-free objective.
    with torch.no_grad():
        scale = max(loss(pixels, targets).total.item(), 1e-12)
    evaluated: list[tuple[LossTerms, torch.Tensor]] = []

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        terms = loss(pixels, targets)
        objective = terms.total / scale
        objective.backward()
        evaluated[:] = [(terms, pixels.detach().clone())]
        return objective

    best_loss, best = float("inf"), pixels.detach().clone()
    step = first_step
    try:
        for step in range(first_step, first_step + steps):
            opt.step(closure)
            terms, evaluated_pixels = evaluated[0]
            if terms.total.item() < best_loss:
                best_loss, best = terms.total.item(), evaluated_pixels
            with torch.no_grad():
                pixels.clamp_(0, 1)
            if callback is not None:
                callback(step, terms, pixels.detach())
    except KeyboardInterrupt as stop:
        raise Stopped(best, step, stop) from None  # ``best`` changes only once a step is whole
    with torch.no_grad():
        final = loss(pixels, targets).total.item()
    return pixels.detach() if final <= best_loss else best


def coarse_to_fine(
    loss: PerceptualLoss,
    content: torch.Tensor,
    style: torch.Tensor,
    sizes: Sequence[int],
    steps: int | Sequence[int],
    init: str = "content",
    optimizer: str = "lbfgs",
    lr: float | None = None,
    seed: int = 0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Optimise at each long-side size in ``sizes`` in turn, each stage starting from the previous
    result upsampled (the first from ``init``). Returns the last stage's image, aspect kept."""
    steps_per_stage = [steps] * len(sizes) if isinstance(steps, int) else list(steps)
    if len(steps_per_stage) != len(sizes):
        raise ValueError(f"{len(sizes)} sizes need as many step counts, got {steps_per_stage}")
    height, width = content.shape[-2:]
    generator = torch.Generator().manual_seed(seed)
    image, done = None, 0
    for size, stage_steps in zip(sizes, steps_per_stage, strict=True):
        stage_content = resize(content, long_side_size(height, width, size))
        start = (
            initial_image(init, stage_content, style, generator)
            if image is None
            else resize(image, tuple(stage_content.shape[-2:]))
        )
        image = optimize_pixels(loss, stage_content, start, stage_steps, optimizer, lr, callback, done)
        done += stage_steps
    assert image is not None, "sizes must not be empty"
    return image


def run(cfg: dict[str, Any]) -> Path:
    """The optimize.py command: load images, optimise with progress bar and TensorBoard, write the output."""
    content_path = Path(str(cfg["content"]))
    output = (
        Path(str(cfg["output"]))
        if cfg.get("output")
        else content_path.with_name(f"{content_path.stem}_{cfg['style']['name']}.jpg")
    )
    if output.resolve() == content_path.resolve():
        raise UserError(f"{output}: is the content image; choose another output so inputs are never overwritten")
    require_writable(output)  # now, not after minutes of optimisation
    if output.exists() and not cfg["overwrite"]:
        raise UserError(f"{output}: exists; pass overwrite=true to replace it")
    output_format(output)
    device = resolve_device(cfg["device"])
    content = read_picture(content_path).rgb[None].to(device)
    loss_cfg = cfg["loss"]
    loss = PerceptualLoss.for_style(cfg["style"]["image"], **loss_cfg).to(device)
    style = loss.style_image.to(device)
    sizes = [int(s) for s in cfg["sizes"]]
    for size in sizes:  # each stage's content, as coarse_to_fine scales it
        loss.check_size(long_side_size(*content.shape[-2:], size), f"{content_path}: at sizes={size}", "sizes")
    total = int(cfg["steps"]) * len(sizes)
    writer = SummaryWriter(str(Path(cfg["output_dir"]) / "tensorboard"))
    progress = tqdm(total=total, unit="step", file=sys.stderr)

    def report(step: int, terms: LossTerms, image: torch.Tensor) -> None:
        progress.update(1)
        progress.set_postfix(
            loss=f"{terms.total.item():.3g}", content=f"{terms.content.item():.3g}", style=f"{terms.style.item():.3g}"
        )
        if cfg["log_every"] and step % cfg["log_every"] == 0:
            for name, value in [
                ("loss", terms.total),
                ("content", terms.content),
                ("style", terms.style),
                ("tv", terms.tv),
            ]:
                writer.add_scalar(f"optimize/{name}", value.item(), step)
        if cfg["image_every"] and (step + 1) % cfg["image_every"] == 0:
            writer.add_image("optimize/image", image[0].clamp(0, 1).cpu(), step)
        if cfg["save_every"] and (step + 1) % cfg["save_every"] == 0:
            write_picture(output.with_name(f"{output.stem}_step{step + 1}{output.suffix}"), image[0].cpu())

    stopped = None
    try:
        result = coarse_to_fine(
            loss,
            content,
            style,
            sizes,
            int(cfg["steps"]),
            cfg["init"],
            cfg["optimizer"],
            cfg["lr"],
            int(cfg["seed"]),
            report,
        )
    except Stopped as stop:
        result, stopped = stop.image, stop
    finally:
        progress.close()
        writer.close()
    out = resize(result[0].cpu(), tuple(content.shape[-2:]))
    if cfg["preserve_color"]:
        out = preserve_colors(out, content[0].cpu())
    write_picture(output, out)
    if stopped is not None:
        exit_stopped(f"wrote {output}, the best image of the {stopped.steps} steps done", stopped.stop)
    return output
