import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional
from PIL import Image, ImageCms

from nst_ff.data import PhotoDataModule, PhotoDataset, ResumableSampler, random_crop, usable_images
from nst_ff.images import ImageError, find_images, load_image, read_picture, resize
from tests.conftest import SAMPLES


@pytest.fixture
def messy_folder(tmp_path: Path, sample_photos: list[Path]) -> Path:
    """The four real photos in nested folders with odd extensions, plus three broken 'images'."""
    root = tmp_path / "photos"
    (root / "a" / "b").mkdir(parents=True)
    shutil.copy(sample_photos[0], root / "one.JPG")
    shutil.copy(sample_photos[1], root / "a" / "two.jpeg")
    shutil.copy(sample_photos[2], root / "a" / "b" / "three.jpg")
    Image.open(sample_photos[3]).save(root / "a" / "four.Png")
    data = sample_photos[0].read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "notes.jpg").write_text("not an image")
    (root / "empty.webp").write_bytes(b"")
    (root / "readme.txt").write_text("ignored: not an image extension")
    return root


def test_find_images_is_recursive_and_case_insensitive(messy_folder: Path) -> None:
    names = {p.name for p in find_images(messy_folder)}
    assert names == {"one.JPG", "two.jpeg", "three.jpg", "four.Png", "truncated.jpg", "notes.jpg", "empty.webp"}


def test_find_images_follows_symlinked_folders_once(tmp_path: Path, sample_photos: list[Path]) -> None:
    dataset, root = tmp_path / "dataset", tmp_path / "photos"
    (dataset / "sub").mkdir(parents=True)
    root.mkdir()
    shutil.copy(sample_photos[0], dataset / "sub" / "one.jpg")
    shutil.copy(sample_photos[1], root / "two.jpg")
    (root / "linked").symlink_to(dataset)  # a dataset linked into a folder of photos
    (dataset / "sub" / "up").symlink_to(dataset)  # a link back up the tree: no endless walk
    (root / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    assert [p.relative_to(root).as_posix() for p in find_images(root)] == ["linked/sub/one.jpg", "two.jpg"]


def test_broken_files_are_skipped_with_one_warning(messy_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nst_ff.data"):
        usable = usable_images(find_images(messy_folder))
    [record] = caplog.records  # one line for all of them
    assert record.getMessage().startswith("skipped 3 unreadable or non-image file(s) of 7: ")
    assert {p.name for p in usable} == {"one.JPG", "two.jpeg", "three.jpg", "four.Png"}


def test_a_file_broken_after_the_check_is_replaced_not_fatal(messy_folder: Path) -> None:
    files = [messy_folder / "truncated.jpg", messy_folder / "one.JPG"]
    dataset = PhotoDataset(files, image_size=32)
    image = dataset[(0, 123)]
    assert image.shape == (3, 32, 32) and dataset.failures == 1


def test_no_usable_image_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_text("nope")
    module = PhotoDataModule(root=str(tmp_path), val_root=str(tmp_path), batch_size=1)
    no_photo = r"no usable image .*; point data.root at a folder of photos$"  # not "lower data.batch_size"
    with pytest.raises(ImageError, match=no_photo):
        module.setup("fit")
    with pytest.raises(ImageError, match="no such folder"):
        PhotoDataModule(root=str(tmp_path / "missing"), val_root=str(tmp_path)).setup("fit")
    # verify=false skips the check of every file, not the one that some file decodes: without it, the first
    # training step raised "RuntimeError: no training image could be read" from the loader, a traceback.
    unverified = PhotoDataModule(root=str(tmp_path), val_root=str(tmp_path), batch_size=1, verify=False)
    with pytest.raises(ImageError, match=no_photo):
        unverified.setup("fit")


def test_crops_are_sized_in_range_and_fixed_by_the_seed(sample_photos: list[Path]) -> None:
    dataset = PhotoDataset(sample_photos, image_size=48)
    a, b, c = dataset[(1, 7)], dataset[(1, 7)], dataset[(1, 8)]
    assert a.shape == (3, 48, 48) and a.dtype == torch.uint8  # 8-bit crops; floats on the training device
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_size_crops_the_resized_photo(sample_photos: list[Path]) -> None:
    """Resize the short side to image_size, then crop crop_size: a crop is a part of the photo at the
    full-size scale, not the whole photo shrunk."""
    whole = PhotoDataset(sample_photos[:1], image_size=64, flip=False)[(0, 0)]
    part = PhotoDataset(sample_photos[:1], image_size=64, flip=False, crop_size=24)[(0, 0)]
    assert part.shape == (3, 24, 24)
    resized = torch.nn.functional.interpolate(whole[None].float(), size=(24, 24), mode="area")[0]
    assert (part - resized).abs().mean() > 5  # not the 64 px crop shrunk to 24 (8-bit values)
    photo = torchvision.transforms.v2.functional.resize(read_picture(sample_photos[0], torch.uint8).rgb, 64)
    windows = torch.nn.functional.unfold(photo[None].float(), 24)
    assert (windows - part.reshape(-1, 1)).abs().amax(0).min() == 0  # an exact window of the resized photo


def test_big_jpegs_decode_at_a_reduced_scale_close_to_a_full_decode(tmp_path: Path, sample_photos: list[Path]) -> None:
    """Training crops of a photo several times their size come from a JPEG decoded at 1/2 to 1/8 scale (12 MP
    photos: 11x faster), still twice the size they are resized to, so they match a full decode's closely."""
    rocket = next(path for path in sample_photos if path.stem == "rocket")  # 640x427
    assert read_picture(rocket, torch.uint8, min_short_side=128).rgb.shape == (3, 214, 320)  # 1/2 scale
    assert read_picture(rocket, torch.uint8, min_short_side=214).rgb.shape == (3, 427, 640)  # 1/2 would be 213.5
    png = tmp_path / "rocket.png"
    Image.open(rocket).save(png)
    assert read_picture(png, torch.uint8, min_short_side=128).rgb.shape == (3, 427, 640)  # not a JPEG: whole
    dataset = PhotoDataset([rocket], image_size=64, flip=False)
    for seed in range(4):
        full = random_crop(read_picture(rocket, torch.uint8).rgb, 64, False, torch.Generator().manual_seed(seed))
        crop = dataset[(0, seed)]
        assert crop.shape == full.shape == (3, 64, 64)
        assert 0 < (crop.float() - full.float()).abs().mean() < 3  # 8-bit levels: decoded smaller, but close
    # A style image (load_image with its long side, loss.style_size) is read the same way: a 114-megapixel JPEG
    # took 6.8 s and 3.9 GB in optimize.py, 4.3 s and 0.9 GB read so.
    small = load_image(rocket, long_side=100)
    whole = resize(read_picture(rocket).rgb, (67, 100))[None]
    assert small.shape == whole.shape == (1, 3, 67, 100) and 0 < (small - whole).abs().mean() < 0.01


def test_embedded_profiles_are_converted_to_srgb_and_srgb_ones_are_taken_as_they_are(tmp_path: Path) -> None:
    """Adobe RGB (the rocket's profile) is converted; the sRGB profile cameras embed (the astronaut's) gives the
    pixels of an untagged file (converted, some colours moved by one level, for 37 ms a megapixel)."""
    colours = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    untagged = torch.from_numpy(colours).permute(2, 0, 1)
    for sample in ("astronaut", "rocket"):
        icc = Image.open(SAMPLES / f"{sample}.jpg").info["icc_profile"]
        Image.fromarray(colours).save(tmp_path / f"{sample}.png", icc_profile=icc)
        read = read_picture(tmp_path / f"{sample}.png", torch.uint8).rgb
        if sample == "astronaut":
            assert torch.equal(read, untagged)
            continue
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(Image.fromarray(colours), source, ImageCms.createProfile("sRGB"))
        assert torch.equal(read, torch.from_numpy(np.array(converted)).permute(2, 0, 1))
        assert (read.int() - untagged.int()).abs().max() > 20


def test_sampler_resumes_where_the_global_step_points() -> None:
    step = {"value": 0}
    sampler = ResumableSampler(size=10, batch_size=2, seed=3, global_step=lambda: step["value"])
    first_epoch = list(sampler)
    assert len(first_epoch) == 10 and sorted(i for i, _ in first_epoch) == list(range(10))
    step["value"] = 3  # three batches done: continue with the fourth
    assert list(sampler) == first_epoch[6:]
    step["value"] = 5  # a new epoch: a new order, new augmentation seeds
    second_epoch = list(sampler)
    assert [i for i, _ in second_epoch] != [i for i, _ in first_epoch]
    assert not {s for _, s in second_epoch} & {s for _, s in first_epoch}


@pytest.mark.parametrize("seed", [0, 4_000_000_000, 2**32 - 1])
def test_every_allowed_seed_gives_usable_distinct_sample_seeds(sample_photos: list[Path], seed: int) -> None:
    sampler = ResumableSampler(size=4, batch_size=2, seed=seed, global_step=lambda: 10**6)
    keys = list(sampler)
    assert len({s for _, s in keys}) == len(keys) and all(0 <= s < 2**63 for _, s in keys)
    dataset = PhotoDataset(sample_photos, image_size=32)
    assert dataset[keys[0]].shape == (3, 32, 32) and torch.equal(dataset[keys[0]], dataset[keys[0]])


def test_sampler_shards_across_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    shards = []
    for rank in range(2):
        monkeypatch.setattr(ResumableSampler, "_rank_and_world", staticmethod(lambda r=rank: (r, 2)))
        sampler = ResumableSampler(size=11, batch_size=2, seed=0, global_step=lambda: 0)
        shards.append([i for i, _ in sampler])
    assert len(shards[0]) == len(shards[1]) == 4  # 11 // 2 ranks = 5 per rank, 2 full batches
    assert not set(shards[0]) & set(shards[1])


def test_datamodule_batches_and_validation_set(messy_folder: Path, sample_photos: list[Path]) -> None:
    module = PhotoDataModule(
        root=str(messy_folder),
        val_root=str(sample_photos[0].parent),
        image_size=40,
        batch_size=2,
        num_workers=0,
        val_image_size=24,
        val_count=3,
    )
    module.setup("fit")
    batches = list(module.train_dataloader())
    assert len(batches) == 2 and batches[0].shape == (2, 3, 40, 40) and batches[0].dtype == torch.uint8
    images = module.on_after_batch_transfer(batches[0], 0)  # on the training device, whatever it is
    assert images.dtype == torch.float32 and torch.equal(images * 255, batches[0].float())
    assert module.val_images.shape == (3, 3, 24, 24)
    assert next(iter(module.val_dataloader())).shape == (3, 3, 24, 24)


def test_photos_under_8_px_on_a_side_are_used(tmp_path: Path, sample_photos: list[Path]) -> None:
    """Before: a JPEG 8x5 or 7x300 asked libjpeg for a 1/8-scale draft of 0 px, Pillow divided by zero, and the
    check skipped the photo as "unreadable or non-image", though it decodes."""
    root = tmp_path / "photos"
    root.mkdir()
    shutil.copy(sample_photos[0], root / "big.jpg")
    photo = Image.open(sample_photos[1]).convert("RGB")
    for width, height in ((8, 5), (7, 300)):
        photo.resize((width, height)).save(root / f"tiny_{width}x{height}.jpg")
    usable = usable_images(find_images(root))
    assert [p.name for p in usable] == ["big.jpg", "tiny_7x300.jpg", "tiny_8x5.jpg"]
    assert read_picture(root / "tiny_8x5.jpg").rgb.shape == (3, 5, 8)
