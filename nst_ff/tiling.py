"""Stylise images too large for memory in overlapping tiles that agree with each other.

Instance norm normalises each feature map by its own mean and variance, so tiles run separately
would each get their own statistics and disagree in colour and contrast. Here the statistics of
every instance-norm layer are measured once on the whole image (downscaled to ``stats_pixels`` if it
is larger) and every tile is normalised with them; tiles overlap and are blended with linear ramps
so that no seam is left where their receptive fields were cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from nst_ff.images import long_side_size, resize
from nst_ff.net import InstanceNorm


def _whole_number(value: object) -> bool:
    # A bool is an int to Python: before, tile_above=true was 1 pixel and tiled every image.
    return isinstance(value, int) and not isinstance(value, bool)


def tiling_error(tile_above: int | str, tile_size: int, tile_overlap: int) -> str | None:
    """What is wrong with these tiling options (``infer.py``'s and ``Stylizer``'s), as ``option=value: what is
    allowed``; None when nothing is."""
    if not (tile_above == "auto" or (_whole_number(tile_above) and tile_above >= 1)):
        return f"tile_above={tile_above}: auto (the device's choice) or 1 or more pixels"
    if not _whole_number(tile_size) or tile_size < 64:
        return f"tile_size={tile_size}: must be a whole number of pixels, 64 or more"
    if not _whole_number(tile_overlap) or not 0 <= tile_overlap < tile_size // 2:
        return f"tile_overlap={tile_overlap}: must be at least 0 and less than half of tile_size={tile_size}"
    return None


# Tiles start on multiples of 4 so that the network's two stride-2 layers see the same pixel grid
# in every tile as in the whole image.
_ALIGN = 4


@contextmanager
def shared_instance_norm(net: nn.Module, image: torch.Tensor, run: Callable[[torch.Tensor], object]) -> Iterator[None]:
    """Inside the block, every InstanceNorm of ``net`` normalises with the statistics of ``run(image)``."""
    norms = [m for m in net.modules() if isinstance(m, InstanceNorm)]

    def record(module: InstanceNorm, inputs: tuple[torch.Tensor], _: torch.Tensor) -> None:
        module.shared_stats = _statistics(inputs[0], module.eps)

    hooks = [m.register_forward_hook(record) for m in norms]
    try:
        try:
            run(image)
        finally:
            for hook in hooks:
                hook.remove()
        yield
    finally:
        for module in norms:
            module.shared_stats = None


def _statistics(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(variance, mean) per image and channel in float32, as (N, C, 1, 1), by the batch-norm kernel the norm's own
    forward runs: it reads ``x`` once, where ``var_mean`` of a float32 copy of channels_last activations took 6x
    as long and twice the memory (32 channels of 2048x2048 in bf16: 1.06 s and 513 MB against 0.17 s and 259 MB)."""
    weight = torch.ones(x.shape[1], device=x.device)  # float32 weights: float32 statistics of bf16/fp16 activations
    bias = torch.zeros_like(weight)
    stats = [torch.native_batch_norm(image, weight, bias, None, None, True, 0.0, eps)[1:] for image in x.split(1)]
    mean = torch.stack([mean for mean, _ in stats])[..., None, None]
    invstd = torch.stack([invstd for _, invstd in stats])[..., None, None]  # 1 / sqrt(variance + eps)
    return invstd.pow(-2) - eps, mean


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) of the fewest tiles at most ``tile`` long that cover ``length`` with ``overlap``, all of one
    length: 2101 px in 1024 px tiles are three of 744 px, not two of 1024 and a third that overlaps them by 908
    (1.4-1.9x the pixels through the network). The last tile reaches the edge (up to 3 pixels more, as starts
    are aligned)."""
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    size = min(tile, math.ceil((length + (count - 1) * overlap) / (count * _ALIGN)) * _ALIGN)
    starts = [(length - size) * i // (count - 1) // _ALIGN * _ALIGN for i in range(count)]
    return [(start, start + size) for start in starts[:-1]] + [(starts[-1], length)]


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    weight = torch.ones(length)
    ramp = torch.linspace(0, 1, overlap + 2)[1:-1]
    if not at_start and overlap:
        weight[:overlap] = ramp
    if not at_end and overlap:
        weight[-overlap:] = ramp.flip(0)
    return weight


def stylize_tiled(
    net: nn.Module,
    image: torch.Tensor,
    run: Callable[[torch.Tensor], torch.Tensor],
    tile: int = 1024,
    overlap: int = 64,
    stats_pixels: int = 1024 * 1024,
) -> torch.Tensor:
    """``run`` the network over (1, 3, H, W) ``image`` tile by tile; returns (1, 3, H, W) on the CPU. The
    statistics are measured on the image downscaled to ``stats_pixels`` if it has more. ``tile`` is rounded down
    to a multiple of 4, ``overlap`` up to one."""
    tile = max(tile // _ALIGN * _ALIGN, 2 * _ALIGN)
    # Up: before, an overlap of 1-3 pixels was rounded down to none, and its tiles were not blended at all.
    overlap = min(math.ceil(overlap / _ALIGN) * _ALIGN, tile // 2)
    height, width = image.shape[-2:]
    scale = math.sqrt(stats_pixels / (height * width))
    small = image if scale >= 1 else resize(image, long_side_size(height, width, int(max(height, width) * scale)))
    output = torch.zeros(1, 3, height, width)
    total = torch.zeros(1, 1, height, width)
    with shared_instance_norm(net, small, run):
        for top, bottom in _spans(height, tile, overlap):
            for left, right in _spans(width, tile, overlap):
                out = run(image[..., top:bottom, left:right]).float().cpu()
                weight = (
                    _ramp(bottom - top, overlap, top == 0, bottom == height)[:, None]
                    * _ramp(right - left, overlap, left == 0, right == width)[None, :]
                )
                output[..., top:bottom, left:right] += out * weight
                total[..., top:bottom, left:right] += weight
    return output / total.clamp_min(1e-8)
