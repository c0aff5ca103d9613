"""Inference: run a trained TransformerNet on images fast, on whatever device is there.

Imports neither Lightning nor the VGG code, so it starts quickly and needs no loss network.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from nst_ff.color import preserve_colors
from nst_ff.device import keep_freed_memory, resolve_device
from nst_ff.execution import compile_mode, compiled, inference_execution, tile_above_pixels
from nst_ff.export import load_model, resolve_model
from nst_ff.images import Picture, decode, long_side_size, resize, to_pil
from nst_ff.net import TransformerNet
from nst_ff.tiling import stylize_tiled, tiling_error


def _check_batch(images: torch.Tensor) -> None:
    """A one-line error for images the network cannot take, instead of one from deep inside it."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected an (N, 3, H, W) batch of images, got shape {tuple(images.shape)} (Stylizer.stylize also "
            "takes one (3, H, W) image)"
        )
    if not images.is_floating_point():
        raise TypeError(
            f"expected float images in [0, 1], got {images.dtype}; convert 8-bit images with nst_ff.images.to_float"
        )


def max_size_error(max_size: int | None) -> str | None:
    """What is wrong with ``max_size`` (``infer.py``'s, ``nst-serve``'s and ``Stylizer.stylize_batch``'s), as
    ``max_size=value: what is allowed``; None when nothing is."""
    return None if max_size is None or max_size >= 16 else f"max_size={max_size}: 16 or more, or null"


class Stylizer:
    """Stylise images with a trained TransformerNet.

    ``stylizer(images)`` maps (N, 3, H, W) float images in [0, 1] to stylised images of the same size
    (on the input's device: pass tensors on the GPU to keep the work there); ``stylizer.stylize(image,
    ...)`` does the same for a PIL image or tensors with the user-facing options. How the network runs
    is chosen for the device by ``nst_ff.execution.inference_execution``: weights converted once to the
    fastest precision that keeps outputs close to fp32 (``resolve_dtype``), the device's fastest memory
    layout (``channels_last=None``; True or False forces one), inference mode. The Stylizer works on its own
    copy of ``net``. ``compile=True`` adds torch.compile (static shapes first, dynamic once a second size
    comes; CUDA graphs on CUDA; ``nst_ff.execution.compile_inference`` says when it pays off); compiled,
    a batch shorter than one its image shape already ran as is padded to that size;
    ``fast_allocator`` keeps freed memory for reuse on CPU (``nst_ff.device.keep_freed_memory``).
    Images of more than ``tile_above`` pixels (``auto``: the device's memory policy,
    ``nst_ff.execution.tile_above_pixels``) are stylised in tiles (``nst_ff.tiling``).
    """

    def __init__(
        self,
        net: TransformerNet,
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool | None = None,
        compile: bool = False,
        fast_allocator: bool = True,
        tile_above: int | str = "auto",
        tile_size: int = 1024,
        tile_overlap: int = 64,
    ) -> None:
        problem = tiling_error(tile_above, tile_size, tile_overlap)
        if problem:
            raise ValueError(problem)
        self.device = resolve_device(device)
        self.execution = inference_execution(self.device, precision, channels_last, compiled=compile)
        self.dtype = self.execution.dtype
        self.net = self.execution.prepare(copy.deepcopy(net).eval())
        if self.device.type == "cpu" and fast_allocator:
            keep_freed_memory()
        # Shapes start static: on an H200 a static graph ran 1024x1024 in 3.3 ms where dynamic=True took 8.7 ms
        # (eager 10.1) and compiled in 10 s instead of 36. A second size recompiles once, with dynamic shapes.
        mode = compile_mode(self.device)
        self.forward = compiled(self.net, mode=mode) if compile else self.net
        # CUDA graphs write every call's output into the same memory: each result is copied out before the next.
        self.cuda_graphs = compile and mode == "reduce-overhead"
        # A batch shorter than one its image shape already ran as is padded to that size, so that a compiled
        # network runs a shape it has compiled (not a recompilation: 36 s with dynamic shapes on an H200) and
        # cudnn one it has autotuned (compiled jobs only): a folder's or a video's last batch. Eager, padding
        # only costs time.
        self.pad_short_batches = compile
        self._batch_sizes: dict[torch.Size, int] = {}  # image shape -> the largest batch it ran as
        # Tiles share statistics through TransformerNet's InstanceNorm modules; a net without them (an ONNX
        # export run by onnxruntime) stylises whole images.
        self.tile_above = tile_above_pixels(tile_above, self.device) if isinstance(net, TransformerNet) else math.inf
        self.tile_size, self.tile_overlap = tile_size, tile_overlap

    @classmethod
    def from_file(cls, model: str | Path, **options: Any) -> Stylizer:
        """A model file (``.safetensors``, ``.ckpt``, ``.onnx``) or a name as ``infer.py model=`` takes it: a shipped
        model, or one in the user's models folder (``nst_ff.export.resolve_model``). ``options``: the constructor's."""
        net, _ = load_model(resolve_model(str(model)))
        return cls(net, **options)

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        count = len(images)
        if self.pad_short_batches:
            shape = images.shape[1:]
            full = self._batch_sizes[shape] = max(count, self._batch_sizes.get(shape, 0))
            if full > count:
                images = torch.cat([images, images[-1:].expand(full - count, -1, -1, -1)])
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
            return self.forward(self.execution.inputs(images))[:count].clone()
        return self.forward(self.execution.inputs(images))[:count]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float images in [0, 1] -> stylised float32 images, same size, on the input's device."""
        _check_batch(images)
        # Autotuning covers a tiled image's statistics pass (the eager network on a downscaled copy) too.
        with torch.inference_mode(), self.execution.autotuning():
            if images.shape[-2] * images.shape[-1] <= self.tile_above:
                out = self._run(images)
            else:
                # The statistics pass runs on as many pixels as the memory of a whole image at tile_above allows
                # beside this image's own buffers (~50 B a pixel against the pass's ~320, bf16 on a CPU), and on at
                # least 1024x1024 or a tile: downscaled further, the statistics drift from the whole image's (a
                # 3000 px mosaic of test photos tiled against whole: 29.5 dB from 1024 px, 38.7 from 2048, 50 from
                # the whole), and a photo just above the threshold would look unlike one just below.
                pixels = images.shape[-2] * images.shape[-1]
                stats_pixels = max(self.tile_above - pixels // 10, self.tile_size**2, 1024**2)
                out = torch.cat(
                    [
                        stylize_tiled(self.net, image[None], self._run, self.tile_size, self.tile_overlap, stats_pixels)
                        for image in images
                    ]
                )
        return out.to(images.device, torch.float32)

    def stylize_batch(
        self, images: torch.Tensor, strength: float = 1.0, preserve_color: bool = False, max_size: int | None = None
    ) -> torch.Tensor:
        """(N, 3, H, W) images -> stylised images, same size and device. ``strength`` blends with the original
        (0: unchanged); ``preserve_color`` keeps the photo's colours; ``max_size`` (16 or more, or None) caps the
        long side the network sees (the result is scaled back up to the original size)."""
        if not 0 <= strength <= 1:
            raise ValueError(f"strength must be between 0 and 1, got {strength}")
        # Before: -5 gave the network a 1x1 image (a flat result), 0 was taken as no limit.
        if problem := max_size_error(max_size):
            raise ValueError(problem)
        _check_batch(images)
        if strength == 0:
            return images.to(torch.float32, copy=True)  # float32, as every other strength gives
        height, width = images.shape[-2:]
        work = images
        if max_size is not None and max(height, width) > max_size:
            work = resize(images, long_side_size(height, width, max_size))
        out = resize(self(work), (height, width))
        if preserve_color:
            out = preserve_colors(out, images)
        return out if strength == 1 else torch.lerp(images.float(), out, strength)

    def stylize_picture(self, picture: Picture, **options: Any) -> Picture:
        """The stylised picture, same size, alpha kept; ``options``: those of ``stylize_batch``."""
        return Picture(self.stylize_batch(picture.rgb[None], **options)[0], picture.alpha)

    def stylize(self, image: Image.Image | torch.Tensor, **options: Any) -> Image.Image | torch.Tensor:
        """One PIL image (any mode; alpha kept), a (3, H, W) tensor or an (N, 3, H, W) batch in [0, 1] -> the
        stylised image(s), same size, type and device; a PIL image's EXIF orientation is applied, as ``infer.py``
        does, so a rotated photo comes back upright, width and height swapped. ``options``: those of
        ``stylize_batch``."""
        if isinstance(image, Image.Image):
            out = self.stylize_picture(decode(image), **options)
            return to_pil(out.rgb, out.alpha)
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"expected a PIL image or a torch tensor, got {type(image).__name__}")
        if image.ndim == 3:
            return self.stylize_batch(image[None], **options)[0]
        return self.stylize_batch(image, **options)
