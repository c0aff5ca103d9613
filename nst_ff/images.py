"""Image files <-> tensors in the package's image convention (see ``nst_ff.net``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from nst_ff.errors import UserError
from nst_ff.files import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class ImageError(UserError, ValueError):
    """A user's image file cannot be used; the message names the file and the reason."""


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image fully, apply its EXIF orientation and convert it to RGB."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: unreadable image ({error})") from None


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) float tensor in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) tensor in [0, 1] -> PIL RGB image."""
    if image.ndim == 4:
        image = image[0]
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def resize_long_side(image: Image.Image, size: int | None) -> Image.Image:
    if not size or max(image.size) == size:
        return image
    scale = size / max(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new_size, Image.Resampling.LANCZOS)


def load_image(path: str | Path, long_side: int | None = None) -> torch.Tensor:
    """Image file -> (1, 3, H, W) tensor in [0, 1], optionally resized so its long side is ``long_side``."""
    return to_tensor(resize_long_side(open_rgb(path), long_side)).unsqueeze(0)


def save_image(image: torch.Tensor | Image.Image, path: str | Path) -> None:
    """Write atomically: a crash mid-write never leaves a half-written file at ``path``."""
    path = Path(path)
    pil = image if isinstance(image, Image.Image) else to_pil(image)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unknown image extension; use one of {', '.join(IMAGE_EXTENSIONS)}")
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    atomic_write(path, lambda file: pil.save(file, format=fmt, **options))
