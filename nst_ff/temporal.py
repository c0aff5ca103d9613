"""Temporal stability of stylised video: measured on clips with exactly known motion, and trained for.

A clip is made from a still photo by moving a virtual camera over it (a pan, a zoom, a rotation, or
a static camera) and adding fresh sensor noise to every frame. The motion between two frames is then
known exactly, so no optical flow (and no flow network) is needed: the warping error is the mean
squared difference between each stylised frame and the previous stylised frame moved by that motion,
over the pixels visible in both. For a static camera it is the plain frame-to-frame difference.

Training uses the same warps on still photos (Wang et al. 2020, "Consistent video style transfer via
compound regularization"): stylising a randomly moved, noisier copy of a photo must give the moved
stylisation of the photo (``temporal_consistency_loss``).

Motions are 3x3 matrices in pixel units mapping a pixel (x, y, 1) of one image to the point of
another image that it shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Motion:
    """A camera moving by the same amount every frame: ``shift`` pixels (x, y), ``zoom`` (scale factor,
    >1 zooms in) and ``degrees`` (rotation)."""

    shift: tuple[float, float] = (0.0, 0.0)
    zoom: float = 1.0
    degrees: float = 0.0


# The measure's clips. Shifts are not multiples of 4, so the network's stride-4 grid lands
# differently on the scene in every frame, as in real footage.
MOTIONS = {
    "pan": Motion(shift=(3.0, 0.0)),
    "zoom": Motion(zoom=1.01),
    "rotation": Motion(degrees=0.5),
    "static": Motion(),
}


def _affine(angle: float = 0.0, scale: float = 1.0, x: float = 0.0, y: float = 0.0) -> torch.Tensor:
    """Rotate by ``angle`` (radians) and scale about the origin, then translate by (x, y)."""
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    return torch.tensor([[cos, -sin, x], [sin, cos, y], [0.0, 0.0, 1.0]], dtype=torch.float64)


def warp(
    images: torch.Tensor, matrices: torch.Tensor, size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample (N, C, H', W') ``images`` (bicubic) into (N, C, H, W) images (``size``, default the input's):
    output pixel p shows the input at ``matrices[n] @ p`` ((N, 3, 3) or (3, 3), pixel units). Returns them and
    a (N, 1, H, W) mask of the pixels whose source lies inside the input (the others hold border pixels)."""
    n = images.shape[0]
    h, w = size or images.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)
    source = torch.einsum("nij,hwj->nhwi", matrices.to(torch.float64).expand(n, 3, 3).cpu(), points)[..., :2]
    extent = torch.tensor([images.shape[-1], images.shape[-2]], dtype=torch.float64)
    eps = 1e-6
    valid = ((source >= -eps) & (source <= extent - 1 + eps)).all(dim=-1)
    grid = ((2 * source + 1) / extent - 1).to(images.device, images.dtype)  # align_corners=False convention
    warped = F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return warped, valid[:, None].to(images.device, images.dtype)


def masked_mse(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over the pixels where ``valid`` (N, 1, H, W) is 1, all channels."""
    return ((a.float() - b.float()) ** 2 * valid).sum() / (valid.sum() * a.shape[1]).clamp_min(1)


def camera_path(motion: Motion, frames: int, photo_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(frames, 3, 3): frame pixel -> photo pixel for a camera of ``size`` (H, W) over a photo of ``photo_size``,
    centred on the photo halfway through the clip. Pure pans stay on the photo's pixel grid (no resampling)."""
    (photo_h, photo_w), (h, w) = photo_size, size
    half = (frames - 1) / 2
    # Where the frame's centre starts on the photo: the offset from frame to photo is a whole pixel count.
    x0 = (w - 1) / 2 + round((photo_w - w) / 2 - half * motion.shift[0])
    y0 = (h - 1) / 2 + round((photo_h - h) / 2 - half * motion.shift[1])
    to_centre = _affine(x=-(w - 1) / 2, y=-(h - 1) / 2)
    matrices = [
        _affine(
            math.radians(motion.degrees * t),
            motion.zoom**-t,
            x0 + t * motion.shift[0],
            y0 + t * motion.shift[1],
        )
        @ to_centre
        for t in range(frames)
    ]
    return torch.stack(matrices)


def synthetic_clip(
    photo: torch.Tensor,
    motion: Motion,
    frames: int,
    size: tuple[int, int],
    noise: float = 0.005,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip of ``frames`` (T, 3, H, W) filmed from a (3, H', W') photo by a camera moving by ``motion``,
    with Gaussian sensor noise of standard deviation ``noise``, quantised to 8 bits like decoded video;
    and the (T - 1, 3, 3) motions mapping each frame's pixels to the previous frame's.
    The camera must stay on the photo (ValueError otherwise: use a larger photo or a smaller ``size``)."""
    path = camera_path(motion, frames, tuple(photo.shape[-2:]), size)
    h, w = size
    corners = torch.tensor([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], dtype=torch.float64)
    seen = torch.einsum("tij,cj->tci", path, corners)[..., :2]
    limit = torch.tensor([photo.shape[-1] - 1, photo.shape[-2] - 1], dtype=torch.float64)
    if (seen < 0).any() or (seen > limit).any():
        raise ValueError(f"a {w}x{h} camera moving by {motion} for {frames} frames leaves the photo")
    clip, _ = warp(photo[None].expand(frames, -1, -1, -1).float(), path, size)
    generator = torch.Generator().manual_seed(seed)
    clip = clip + noise * torch.randn(clip.shape, generator=generator)
    clip = clip.clamp(0, 1).mul(255).round().div(255)
    to_previous = torch.linalg.inv(path[:-1]) @ path[1:]
    return clip, to_previous


def warping_error(frames: torch.Tensor, to_previous: torch.Tensor) -> float:
    """Mean squared difference between each frame of (T, C, H, W) ``frames`` and the previous frame moved by
    the known motion (``synthetic_clip``'s second result), over the pixels visible in both frames."""
    moved, valid = warp(frames[:-1].float(), to_previous)
    return masked_mse(frames[1:], moved, valid).item()


def random_motions(
    count: int,
    size: tuple[int, int],
    generator: torch.Generator,
    max_shift: float = 4.0,
    max_degrees: float = 1.0,
    max_zoom: float = 0.03,
) -> torch.Tensor:
    """(count, 3, 3) random small camera motions about the image centre: sub-pixel shifts up to ``max_shift``
    pixels, rotations up to ``max_degrees``, zooms up to ``max_zoom`` either way."""
    h, w = size
    draws = (torch.rand(count, 4, generator=generator, dtype=torch.float64) * 2 - 1).tolist()
    centre = _affine(x=(w - 1) / 2, y=(h - 1) / 2)
    to_centre = _affine(x=-(w - 1) / 2, y=-(h - 1) / 2)
    motions = [
        _affine(math.radians(max_degrees * r), (1 + max_zoom) ** z, max_shift * x, max_shift * y)
        for x, y, r, z in draws
    ]
    return torch.stack([centre @ motion @ to_centre for motion in motions])


def temporal_consistency_loss(
    net: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    outputs: torch.Tensor,
    generator: torch.Generator,
    max_noise: float = 0.02,
) -> torch.Tensor:
    """How much ``net`` fails to commute with camera motion: ``net(move(images) + noise)`` against
    ``move(outputs)`` (``outputs = net(images)``) for random small motions and Gaussian noise up to
    ``max_noise``, over the pixels visible in both. Differentiable through both stylisations."""
    motions = random_motions(images.shape[0], tuple(images.shape[-2:]), generator)
    moved, valid = warp(images, motions)
    sigma = max_noise * torch.rand(images.shape[0], 1, 1, 1, generator=generator)
    noise = torch.randn(moved.shape, generator=generator) * sigma
    moved = (moved + noise.to(moved.device, moved.dtype)).clamp(0, 1)
    target, _ = warp(outputs, motions)
    return masked_mse(net(moved), target, valid)
