"""Stylise images too large for memory in overlapping tiles that agree with each other.

Instance norm normalises each feature map by its own mean and variance, so tiles run separately
would each get their own statistics and disagree in colour and contrast. Here the statistics of
every instance-norm layer are measured once on the whole image (downscaled to ``stats_size`` if it
is larger) and every tile is normalised with them; tiles overlap and are blended with linear ramps
so that no seam is left where their receptive fields were cut.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from nst_ff.images import long_side_size, resize
from nst_ff.net import InstanceNorm

# Tiles start on multiples of 4 so that the network's two stride-2 layers see the same pixel grid
# in every tile as in the whole image.
_ALIGN = 4


@contextmanager
def shared_instance_norm(net: nn.Module, image: torch.Tensor, run: Callable[[torch.Tensor], object]) -> Iterator[None]:
    """Inside the block, every InstanceNorm of ``net`` normalises with the statistics of ``run(image)``."""
    norms = [m for m in net.modules() if isinstance(m, InstanceNorm)]

    def record(module: InstanceNorm, inputs: tuple[torch.Tensor], _: torch.Tensor) -> None:
        module.shared_stats = module.statistics(inputs[0])

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


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    last = (length - tile) // _ALIGN * _ALIGN
    return sorted({*starts, last})


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
    stats_size: int = 1024,
) -> torch.Tensor:
    """``run`` the network over (1, 3, H, W) ``image`` tile by tile; returns (1, 3, H, W) on the CPU."""
    tile = max(tile // _ALIGN * _ALIGN, 2 * _ALIGN)
    overlap = min(overlap // _ALIGN * _ALIGN, tile // 2)
    height, width = image.shape[-2:]
    small = image if max(height, width) <= stats_size else resize(image, long_side_size(height, width, stats_size))
    output = torch.zeros(1, 3, height, width)
    total = torch.zeros(1, 1, height, width)
    step = tile - overlap
    rows, columns = _starts(height, tile, step), _starts(width, tile, step)
    with shared_instance_norm(net, small, run):
        for top in rows:
            # The last tile reaches the edge (up to 3 pixels more than ``tile``, as starts are aligned).
            bottom = height if top == rows[-1] else top + tile
            for left in columns:
                right = width if left == columns[-1] else left + tile
                out = run(image[..., top:bottom, left:right]).float().cpu()
                weight = (
                    _ramp(bottom - top, overlap, top == 0, bottom == height)[:, None]
                    * _ramp(right - left, overlap, left == 0, right == width)[None, :]
                )
                output[..., top:bottom, left:right] += out * weight
                total[..., top:bottom, left:right] += weight
    return output / total.clamp_min(1e-8)
