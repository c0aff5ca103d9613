"""Colour preservation (Gatys et al. 2017): transfer the style to luminance only."""

from __future__ import annotations

import torch


def _rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(-3)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([y, (b - y) * 0.564, (r - y) * 0.713], dim=-3)


def _ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    y, cb, cr = ycc.unbind(-3)
    r = y + cr / 0.713
    b = y + cb / 0.564
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return torch.stack([r, g, b], dim=-3).clamp(0, 1)


def preserve_colors(stylized: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Luminance of ``stylized`` with the chroma of ``original`` (Gatys et al. 2017, colour preservation)."""
    ycc = _rgb_to_ycbcr(original)
    ycc[..., 0, :, :] = _rgb_to_ycbcr(stylized)[..., 0, :, :]
    return _ycbcr_to_rgb(ycc)
