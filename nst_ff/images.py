"""Image files <-> tensors in the package's image convention (see ``nst_ff.net``).

Every decoder path goes through ``read_picture``: EXIF orientation applied, embedded ICC profiles
converted to sRGB, any Pillow mode (RGB, RGBA, L, LA, P, CMYK, 16-bit) turned into RGB in [0, 1]
plus an optional alpha channel.
"""

from __future__ import annotations

import functools
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from nst_ff.errors import UserError
from nst_ff.files import OutputError, atomic_write, cannot_write

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_SRGB = ImageCms.createProfile("sRGB")


class ImageError(UserError, ValueError):
    """A user's image file cannot be used; the message names the file and the reason."""


def find_images(root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under ``root`` (recursive, extension matched in any case), sorted for reproducibility.
    Symlinked folders are followed (a dataset linked into a folder of photos; ``Path.rglob`` skips them before
    Python 3.13), each real folder once, so that a link back up the tree is no endless loop. A folder this user
    may not read is left out with a warning (os.walk skipped it without a word)."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root}: no such folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ImageError(f"{root}: permission denied; change its permissions, or give another folder")

    def unreadable(error: OSError) -> None:
        log.warning("%s: cannot read this folder (%s); its files are left out", error.filename, error.strerror)

    found, seen = [], set()
    for folder, subfolders, names in os.walk(root, onerror=unreadable, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        found += [Path(folder, name) for name in names if Path(name).suffix.lower() in extensions]
    return sorted(path for path in found if path.is_file())


@dataclass
class Picture:
    """``rgb``: (3, H, W) float in [0, 1], sRGB; ``alpha``: (1, H, W) in [0, 1] or None. Read with
    ``dtype=torch.uint8``, both hold the 8-bit values instead (0..255)."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None = None


def _to_srgb(image: Image.Image) -> Image.Image:
    """Apply an embedded ICC profile so the pixel values are sRGB (a no-op without a profile, or with one that
    is sRGB already)."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "CMYK", "L"):
        return image
    try:
        if image.mode == "RGB" and _is_srgb(icc):
            return image
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError):
        return image  # a broken profile: the raw values are the best guess left


@functools.lru_cache(maxsize=16)
def _is_srgb(icc: bytes) -> bool:
    """Whether converting from the RGB profile ``icc`` to sRGB moves no colour of ``_colour_grid`` by more than one
    level, the conversion's own rounding: the sRGB profiles most cameras and editors embed ("sRGB IEC61966-2.1"
    moves 0.15% of them by one). A 1024x1024 JPEG with one took 12 ms to decode and 37 ms more to convert, for
    the same pixels (2-core Xeon); the answer is worked out once per profile."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    grid = _colour_grid()
    converted = ImageCms.profileToProfile(grid, source, _SRGB, outputMode="RGB")
    return int(np.abs(np.asarray(converted, np.int16) - np.asarray(grid, np.int16)).max()) <= 1


@functools.cache
def _colour_grid() -> Image.Image:
    """52 levels of each channel in all combinations, and every grey level: 140,864 colours."""
    levels = np.linspace(0, 255, 52).round().astype(np.uint8)
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    grey = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    return Image.fromarray(np.concatenate([cube, grey])[None])


def _high_bit_depth(image: Image.Image) -> torch.Tensor:
    """Modes I;16*, I and F (16/32-bit single channel) -> (3, H, W) in [0, 1]."""
    array = np.asarray(image).astype(np.float32)
    scale = 1.0 if image.mode == "F" else 65535.0
    grey = torch.from_numpy(np.clip(array / scale, 0, 1))
    return grey.unsqueeze(0).expand(3, -1, -1).contiguous()


def decode(image: Image.Image, dtype: torch.dtype = torch.float32) -> Picture:
    """A loaded PIL image in any mode -> ``Picture`` of ``dtype`` (float, or uint8 for 8-bit values)."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I") or image.mode == "F":
        rgb = _high_bit_depth(image)
        alpha = None
        if isinstance(image.info.get("transparency"), int):  # a 16-bit grey PNG's one transparent value (tRNS)
            opaque = torch.from_numpy(np.asarray(image) != image.info["transparency"])[None]
            alpha = opaque.to(torch.uint8) * 255 if dtype == torch.uint8 else opaque.to(dtype)
        return Picture(to_uint8(rgb) if dtype == torch.uint8 else rgb.to(dtype), alpha)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    alpha = None
    if has_alpha:
        # Pillow converts premultiplied La to LA only (RGBa converts directly).
        rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")
        alpha = to_tensor(rgba.getchannel("A"), dtype)
        image = rgba.convert("RGB")
    elif image.mode not in ("RGB", "CMYK", "L"):
        image = image.convert("RGB")
    image = _to_srgb(image)  # convert("RGB") would copy an RGB image too: 0.3 of 4.8 ms per 1024x1024 JPEG
    return Picture(to_tensor(image if image.mode == "RGB" else image.convert("RGB"), dtype), alpha)


def read_picture(path: str | Path, dtype: torch.dtype = torch.float32, min_short_side: int | None = None) -> Picture:
    """Decode an image file, whole (``dtype`` as in ``decode``); failures become one-line ``ImageError``s.
    ``min_short_side``: the caller only needs that many pixels across, so a JPEG is decoded at the smallest of
    its 1/1, 1/2, 1/4 and 1/8 scales (libjpeg scales in its inverse DCT) whose short side is still at least
    that (a 12-megapixel photo at 1/8: 11 ms instead of 150 ms); other formats decode at full size."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if min_short_side:
                image.draft(image.mode, (min_short_side, min_short_side))
            image.load()
            return decode(image, dtype)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except PermissionError:  # before: "unreadable image (...); re-export or re-download it"
        raise ImageError(f"{path}: permission denied; change its permissions, or leave it out") from None
    except UnidentifiedImageError:
        empty = Path(path).stat().st_size == 0
        what = "an empty file" if empty else "not an image file (or a format Pillow cannot read)"
        raise ImageError(f"{path}: {what}; give a JPEG, PNG, WebP, BMP or TIFF image") from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6  # Pillow refuses twice its warning threshold
        raise ImageError(
            f"{path}: more than {limit:.0f} megapixels, refused as a possible decompression bomb; downscale it first"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: unreadable image ({error}); re-export or re-download it") from None


def to_tensor(image: Image.Image, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """8-bit PIL image -> (C, H, W) tensor: float in [0, 1], contiguous, or uint8 as stored, a view of the
    decoded (H, W, C) memory (channels_last strides). The 8-bit paths (infer.py, the training loader) hand images
    on in (H, W, C) order or crop them, so a copy into (C, H, W) order would be transposed back: without it a
    1024 px JPEG read and batched by infer.py took 12.4-17.2 ms instead of 16.6-23.2, a 256 px loader crop 2.8-3.7
    ms instead of 3.6-5.2 (one thread, four runs alternating with the copy's, 2-core Xeon with AMX)."""
    array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy())
    tensor = (tensor.unsqueeze(-1) if tensor.ndim == 2 else tensor).permute(2, 0, 1)
    if dtype == torch.uint8:
        return tensor
    return tensor.to(dtype, memory_format=torch.contiguous_format).div_(255)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Image in [0, 1] -> 8-bit values, rounded (uint8 images pass through)."""
    if image.dtype == torch.uint8:
        return image
    return image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """8-bit images -> float in [0, 1], on their device (float images pass through)."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def to_pil(image: torch.Tensor, alpha: torch.Tensor | None = None) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) tensor in [0, 1] or uint8 (and optional (1, H, W) alpha) -> PIL RGB or RGBA."""
    if image.ndim == 4:
        image = image[0]
    image = to_uint8(image)
    if alpha is not None:
        image = torch.cat([image, to_uint8(alpha).to(image.device)])
    array = image.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGBA" if alpha is not None else "RGB")


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (C, H, W) or (N, C, H, W) image to ``size`` = (H, W), antialiased when shrinking."""
    batch = image if image.ndim == 4 else image.unsqueeze(0)
    if tuple(batch.shape[-2:]) != tuple(size):
        batch = F.interpolate(batch, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return batch if image.ndim == 4 else batch[0]


def long_side_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(H, W) scaled, aspect kept, so that the long side is ``long_side``."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def load_image(path: str | Path, long_side: int | None = None) -> torch.Tensor:
    """Image file -> (1, 3, H, W) tensor in [0, 1]; the long side scaled to ``long_side`` if given (a big JPEG,
    e.g. a museum's scan of a painting, decoded at a reduced scale that leaves at least twice that)."""
    rgb = read_picture(path, min_short_side=2 * long_side if long_side else None).rgb
    if long_side:
        rgb = resize(rgb, long_side_size(*rgb.shape[-2:], long_side))
    return rgb.unsqueeze(0)


def output_format(path: str | Path) -> str:
    """Pillow's format for writing ``path``, from its extension; an ``ImageError`` for names of other files (check
    before long work, not after it)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ImageError(f"{path}: unknown output image type; end the name with one of {', '.join(IMAGE_EXTENSIONS)}")
    return fmt


def keeps_alpha(path: str | Path) -> bool:
    """Whether ``path``'s image type has an alpha channel (JPEG and BMP have none)."""
    return output_format(path) in ("PNG", "WEBP", "TIFF")


def write_picture(path: str | Path, rgb: torch.Tensor, alpha: torch.Tensor | None = None) -> None:
    """Write atomically (never a half-written file at ``path``). Formats without alpha (JPEG, BMP) drop it."""
    path = Path(path)
    fmt = output_format(path)
    keep_alpha = alpha is not None and keeps_alpha(path)
    pil = to_pil(rgb, alpha if keep_alpha else None)
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    try:
        atomic_write(path, lambda file: pil.save(file, format=fmt, **options))
    except OutputError as error:
        raise ImageError(str(error)) from None
    except OSError as error:  # while writing (a full disk)
        raise ImageError(cannot_write(path, error)) from None
