"""Photos for training: any folder tree of images, resized and randomly cropped, shuffled resumably."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from nst_ff.errors import UserError
from nst_ff.images import ImageError, find_images, read_picture, to_float

log = logging.getLogger(__name__)

TRAIN_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def is_decodable(path: Path) -> bool:
    """Decode the whole file (JPEGs at 1/8 scale, which still reads every byte) to catch truncation."""
    try:
        with Image.open(path) as image:
            # At least 1 px a side: a draft of 0 px (a photo under 8 px on a side) divided by zero in Pillow, and the
            # photo, which decodes, was skipped as unreadable.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
        return True
    except Exception:  # any failure means "not usable": PIL raises many types for bad files
        return False


def usable_images(files: list[Path], verify: bool = True) -> list[Path]:
    """Drop files that do not decode, with one warning counting them (a log line: a Python warning printed the
    line of source that raised it under the message). Unverified, files are taken as they are once
    one of them decodes (usually the first): a folder where none does still stops the run at the start."""
    if not verify:
        return files if any(is_decodable(path) for path in files) else []
    with ThreadPoolExecutor(max_workers=4) as pool:
        ok = list(pool.map(is_decodable, files))
    bad = [path for path, good in zip(files, ok, strict=True) if not good]
    if bad:
        shown = ", ".join(str(p) for p in bad[:3]) + (", ..." if len(bad) > 3 else "")
        log.warning("skipped %d unreadable or non-image file(s) of %d: %s", len(bad), len(files), shown)
    return [path for path, good in zip(files, ok, strict=True) if good]


def random_crop(
    image: torch.Tensor, size: int, flip: bool, generator: torch.Generator, crop: int | None = None
) -> torch.Tensor:
    """Resize the short side to ``size``, take a random ``crop`` x ``crop`` square (default ``size``),
    maybe flip. A uint8 image stays uint8 (torchvision resizes 8-bit images 2.5x faster than float)."""
    crop = crop or size
    tensor = TF.resize(image, size, antialias=True)
    height, width = tensor.shape[-2:]
    top = int(torch.randint(height - crop + 1, (1,), generator=generator))
    left = int(torch.randint(width - crop + 1, (1,), generator=generator))
    tensor = tensor[:, top : top + crop, left : left + crop]
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        tensor = tensor.flip(-1)
    return tensor.contiguous() if tensor.dtype == torch.uint8 else tensor.clamp(0, 1)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    tensor = TF.resize(image, size, antialias=True)
    return TF.center_crop(tensor, [size, size]).clamp(0, 1)


class PhotoDataset(Dataset):
    """Indexed by ``(index, sample_seed)`` pairs from ``ResumableSampler``: the seed fixes the crop and
    flip, so a resumed run sees exactly the batches an uninterrupted one would have.

    Crops are uint8 (3, crop, crop): decoding, resizing and cropping in 8 bits costs a third of the
    float path per photo (3.3 vs 8.6 ms for a 481x321 JPEG on one core), and a quarter of the bytes
    travel through the worker queues and to the GPU. ``PhotoDataModule.on_after_batch_transfer`` turns
    them into float images on the training device."""

    def __init__(self, files: list[Path], image_size: int, flip: bool = True, crop_size: int | None = None) -> None:
        self.files = files
        self.image_size = image_size
        self.crop_size = crop_size
        self.flip = flip
        self.failures = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, seed = key
        generator = torch.Generator().manual_seed(seed)
        # Big JPEGs decode at a reduced scale that leaves twice the short side the crop is resized to: the
        # antialiased resize then still halves it or more, so crops stay within 3 levels (mean absolute
        # difference) of a full decode's, and a 12-megapixel photo takes 17 ms instead of 186 ms.
        # A file that broke after the start-up check is replaced by the next one, never a crash.
        for offset in range(len(self.files)):
            path = self.files[(index + offset) % len(self.files)]
            try:
                rgb = read_picture(path, torch.uint8, min_short_side=2 * self.image_size).rgb
                return random_crop(rgb, self.image_size, self.flip, generator, self.crop_size)
            except ImageError as error:
                self.failures += 1
                if self.failures == 1:
                    log.warning("skipping unreadable training image: %s", error)
        raise RuntimeError("no training image could be read")


class ResumableSampler(Sampler[tuple[int, int]]):
    """A shuffled order that is a pure function of (seed, global step), so that a run resumed at step
    ``s`` continues from the batch after ``s``; shards across ranks under DDP."""

    def __init__(self, size: int, batch_size: int, seed: int, global_step: Callable[[], int]) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.global_step = global_step

    @staticmethod
    def _rank_and_world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def batches_per_epoch(self) -> int:
        return self.size // self._rank_and_world()[1] // self.batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch() * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = self._rank_and_world()
        epoch, batch = divmod(self.global_step(), max(self.batches_per_epoch(), 1))
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        shard = order[rank::world][: len(self)]
        for position in range(batch * self.batch_size, len(shard)):
            # One seed per (epoch, position): distinct augmentations every epoch, identical on resume; folded
            # into torch.Generator's 64-bit range (large seeds would overflow it).
            seed = (self.seed * 1_000_003 + epoch) * 1_000_003 + position * world + rank
            yield shard[position], seed % 2**63


class PhotoLoader(DataLoader):
    """A DataLoader whose shuffling seed travels in the checkpoint (Lightning's stateful-loader hook),
    so a resumed run keeps the original order even if ``seed`` changed on the command line."""

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.sampler.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.seed = int(state["seed"])


def auto_workers(device: torch.device) -> int:
    """Loader processes: on CUDA all cores but two (the training process and its GPU feeding): one
    worker crops ~300 photos/s, a compiled GPU step consumes over 1000/s; elsewhere 2, since the
    training step itself needs the cores."""
    return max(2, (os.cpu_count() or 2) - 2) if device.type == "cuda" else 2


class PhotoDataModule(pl.LightningDataModule):
    """Training photos from ``root`` and a small fixed validation set from ``val_root``.
    ``num_workers`` and ``pin_memory`` None: chosen for the training device (``auto_workers``; pinned
    memory on CUDA)."""

    def __init__(
        self,
        root: str,
        val_root: str,
        image_size: int = 256,
        batch_size: int = 4,
        flip: bool = True,
        num_workers: int | None = None,
        verify: bool = True,
        seed: int = 0,
        val_image_size: int = 256,
        val_count: int = 4,
        pin_memory: bool | None = None,
        crop_size: int | None = None,
    ) -> None:
        super().__init__()
        if crop_size is not None and not 0 < crop_size <= image_size:
            raise UserError(f"data.crop_size={crop_size}: must be between 1 and data.image_size={image_size}")
        self.root, self.val_root = root, val_root
        self.image_size, self.crop_size, self.batch_size, self.flip = image_size, crop_size, batch_size, flip
        self.num_workers, self.verify, self.seed = num_workers, verify, seed
        self.val_image_size, self.val_count, self.pin_memory = val_image_size, val_count, pin_memory
        self.train_set: PhotoDataset | None = None
        self.val_images: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        for key, folder in (("data.root", self.root), ("data.val_root", self.val_root)):
            if not Path(folder).is_dir():
                raise ImageError(f"{folder}: no such folder; set {key} to a folder of photos")
        files = usable_images(find_images(self.root, TRAIN_EXTENSIONS), self.verify)
        self.train_set = PhotoDataset(files, self.image_size, self.flip, self.crop_size)
        self.require_batches(processes=1)
        val_files = usable_images(find_images(self.val_root, TRAIN_EXTENSIONS), True)[: self.val_count]
        if not val_files:
            raise ImageError(f"{self.val_root}: no usable validation image; set data.val_root to a folder of photos")
        self.val_images = torch.stack([center_crop(read_picture(p).rgb, self.val_image_size) for p in val_files])
        log.info("training on %d photos from %s", len(files), self.root)

    def require_batches(self, processes: int) -> None:
        """Each of ``processes`` (DDP ranks) must get a whole batch of its own photos: with fewer, a run has no
        training step and would export an untrained network."""
        assert self.train_set is not None, "setup() finds the photos"
        count = len(self.train_set.files)
        if count == 0:
            raise ImageError(
                f"{self.root}: no usable image (jpg/jpeg/png/webp/bmp, searched recursively); point data.root at a "
                "folder of photos"
            )
        if count < self.batch_size * processes:
            each = f" for each of {processes} processes" if processes > 1 else ""
            raise ImageError(
                f"{self.root}: {count} usable image(s) (jpg/jpeg/png/webp/bmp, searched recursively), "
                f"fewer than one batch of {self.batch_size}{each}; point data.root at a folder with more photos "
                "or lower data.batch_size"
            )

    def _global_step(self) -> int:
        return self.trainer.global_step if self.trainer is not None else 0

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def train_dataloader(self) -> PhotoLoader:
        assert self.train_set is not None
        sampler = ResumableSampler(len(self.train_set), self.batch_size, self.seed, self._global_step)
        device = self._device()
        workers = auto_workers(device) if self.num_workers is None else self.num_workers
        return PhotoLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            pin_memory=device.type == "cuda" if self.pin_memory is None else self.pin_memory,
            # Small folders end an epoch every few seconds on a GPU: keep the workers instead of
            # starting them all again.
            persistent_workers=workers > 0,
        )

    def on_after_batch_transfer(self, batch: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        """uint8 training crops -> float images in [0, 1], on the training device."""
        return to_float(batch)

    def val_dataloader(self) -> DataLoader:
        assert self.val_images is not None
        return DataLoader(self.val_images, batch_size=len(self.val_images))
