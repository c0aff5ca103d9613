"""The inference fast paths give the fp32 reference's output; the user-facing options do what they say."""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from nst_ff.color import _rgb_to_ycbcr
from nst_ff.device import auto_precision, cpu_has_fast_bf16, resolve_dtype
from nst_ff.errors import UserError
from nst_ff.images import decode, load_image, read_picture
from nst_ff.net import InstanceNorm, TransformerNet
from nst_ff.paths import PROJECT_ROOT
from nst_ff.stylize import Stylizer
from nst_ff.tiling import _spans, _statistics, stylize_tiled
from tests.conftest import SAMPLES, small_net


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


@pytest.fixture(scope="module")
def net() -> TransformerNet:
    return small_net(num_res_blocks=2)


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return load_image(SAMPLES / "rocket.jpg")[..., :201, :303]  # odd size on purpose


def reference(net: TransformerNet, image: torch.Tensor) -> torch.Tensor:
    return Stylizer(net, precision="fp32", channels_last=False, fast_allocator=False)(image)


def test_instance_norm_matches_torch_in_both_memory_formats() -> None:
    torch.manual_seed(1)
    ours, theirs = InstanceNorm(6, affine=True), torch.nn.InstanceNorm2d(6, affine=True)
    ours.weight.data.uniform_(0.5, 2)
    ours.bias.data.uniform_(-1, 1)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 9, 13) * 3 + 1
    expected = theirs(x)
    assert torch.allclose(ours(x), expected, atol=1e-5)
    channels_last = ours(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(channels_last, expected, atol=1e-5)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)


def test_default_fast_path_matches_fp32_reference(net: TransformerNet, photo: torch.Tensor) -> None:
    stylizer = Stylizer(net)
    fast = stylizer(photo)
    assert fast.shape == photo.shape
    # auto picks bf16 on CPUs with native bf16 (8 mantissa bits), fp32 on the others.
    assert psnr(fast, reference(net, photo)) > (30 if stylizer.dtype == torch.bfloat16 else 60)


def test_bf16_path_stays_close_to_fp32(net: TransformerNet, photo: torch.Tensor) -> None:
    out = Stylizer(net, precision="bf16")(photo)
    assert out.shape == photo.shape and out.dtype == torch.float32
    assert psnr(out, reference(net, photo)) > 30


def test_compiled_path_matches_and_serves_new_sizes(net: TransformerNet) -> None:
    stylizer = Stylizer(net, compile=True, precision="fp32")  # compiled vs eager, same precision on every CPU
    for size in [(48, 64), (37, 51)]:
        image = torch.rand(1, 3, *size)
        assert torch.allclose(stylizer(image), reference(net, image), atol=1e-4)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "native"),
    [(False, False, False), (False, True, True), (True, False, True), (True, True, True)],
)
def test_auto_precision_follows_the_cpu(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool, native: bool
) -> None:
    """The three CPUs of this project's machines (AVX2 only, AVX512-BF16, AMX), whichever one runs the test."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cpu_has_fast_bf16() is native
    assert resolve_dtype(torch.device("cpu"), "auto") == (torch.bfloat16 if native else None)
    assert auto_precision("cpu") == auto_precision("auto") == ("bf16-mixed" if native else "32-true")
    assert resolve_dtype(torch.device("cpu"), "fp32") is None
    assert resolve_dtype(torch.device("cpu"), "bf16") == torch.bfloat16


@pytest.mark.parametrize("bf16", [False, True])
def test_auto_precision_on_gpus(monkeypatch: pytest.MonkeyPatch, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert resolve_dtype(torch.device("cuda"), "auto") == torch.float16
    assert auto_precision("gpu") == auto_precision("auto") == ("bf16-mixed" if bf16 else "16-mixed")
    with pytest.raises(UserError, match="unknown precision"):
        resolve_dtype(torch.device("cpu"), "int8")


def test_tiles_agree_with_the_whole_image(net: TransformerNet, photo: torch.Tensor) -> None:
    whole = reference(net, photo)
    tiled = Stylizer(net, tile_above=64 * 64, tile_size=96, tile_overlap=32)(photo)
    assert tiled.shape == photo.shape
    assert psnr(tiled, whole) > 38
    # Without shared statistics and overlap, tiles visibly disagree: the test above can fail.
    with torch.inference_mode():
        naive = torch.zeros_like(photo)
        for top in range(0, photo.shape[-2], 96):
            for left in range(0, photo.shape[-1], 96):
                naive[..., top : top + 96, left : left + 96] = net(photo[..., top : top + 96, left : left + 96])
    assert psnr(naive, whole) < psnr(tiled, whole) - 5


def test_an_overlap_of_a_few_pixels_is_rounded_up_to_a_blended_one(net: TransformerNet, photo: torch.Tensor) -> None:
    """Tiles start on multiples of 4: before, an overlap of 1-3 pixels was rounded down to none, tiles unblended."""
    tiled = {
        overlap: Stylizer(net, precision="fp32", tile_above=64 * 64, tile_size=96, tile_overlap=overlap)(photo)
        for overlap in (0, 1, 3, 4)
    }
    assert torch.equal(tiled[1], tiled[4]) and torch.equal(tiled[3], tiled[4])
    assert not torch.equal(tiled[1], tiled[0])


def test_a_photo_just_above_the_tiling_threshold_looks_like_one_stylised_whole() -> None:
    net = small_net(num_res_blocks=2)
    painting = load_image(PROJECT_ROOT / "assets" / "styles" / "the_scream.jpg")  # 1200x1528, 1.8 megapixels
    whole = Stylizer(net, precision="fp32", tile_above=10**9)(painting)
    tiled = Stylizer(net, precision="fp32", tile_above=1_500_000, tile_size=512)(painting)
    # Statistics measured on the photo downscaled to 1024 px gave 36.9 dB; on 1.2 megapixels (tile_above less the
    # photo's own buffers) 42.2, on all of it 47.
    assert psnr(tiled, whole) > 40


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tile_statistics_are_each_image_and_channel_s_in_float32(
    memory_format: torch.memory_format, dtype: torch.dtype
) -> None:
    x = (torch.randn(2, 5, 31, 17, dtype=torch.float64) * 3 + 1).to(dtype).contiguous(memory_format=memory_format)
    var, mean = _statistics(x, eps=1e-5)
    expected_var, expected_mean = torch.var_mean(x.double(), dim=(-2, -1), keepdim=True, correction=0)
    assert var.dtype == mean.dtype == torch.float32 and var.shape == mean.shape == (2, 5, 1, 1)
    torch.testing.assert_close(var.double(), expected_var, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("length", [9, 100, 1025, 2101, 4096, 5000])
def test_tiles_are_the_fewest_of_one_length_that_cover_the_image(length: int) -> None:
    tile, overlap = 1024, 64
    spans = _spans(length, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(start % 4 == 0 for start, _ in spans)
    assert len({end - start for start, end in spans[:-1]}) <= 1 and spans[-1][1] - spans[-1][0] <= tile + 3
    # Neighbours overlap by the blend's width, give or take the alignment, and no fewer tiles would do.
    assert all(overlap - 4 < end - start for (_, end), (start, _) in itertools.pairwise(spans))
    assert len(spans) == (1 if length <= tile else math.ceil((length - overlap) / (tile - overlap)))


def test_tiling_uses_downscaled_statistics_for_huge_images(net: TransformerNet, photo: torch.Tensor) -> None:
    with torch.inference_mode():
        out = stylize_tiled(net, photo, net, tile=64, overlap=16, stats_pixels=100 * 100)
    assert out.shape == photo.shape and psnr(out, reference(net, photo)) > 25
    assert all(m.shared_stats is None for m in net.modules() if isinstance(m, InstanceNorm))


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 4), (333, 17)])
def test_any_size_in_same_size_out(net: TransformerNet, size: tuple[int, int]) -> None:
    image = torch.rand(3, *size)
    assert Stylizer(net).stylize(image).shape == image.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_any_float_tensor_runs_in_fp32(net: TransformerNet, dtype: torch.dtype) -> None:
    image = torch.rand(3, 24, 32)
    stylizer = Stylizer(net, precision="fp32")
    out = stylizer.stylize(image.to(dtype))
    assert out.dtype == torch.float32 and psnr(out, stylizer.stylize(image.to(dtype).float())) == math.inf


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        (torch.zeros(3, 8, 8, dtype=torch.uint8), TypeError, r"float images in \[0, 1\], got torch.uint8; .*to_float"),
        (torch.rand(8, 8), ValueError, r"got shape \(8, 8\)"),
        (torch.rand(1, 8, 8, 3), ValueError, r"got shape \(1, 8, 8, 3\)"),
        ("photo.jpg", TypeError, "a PIL image or a torch tensor, got str"),
    ],
)
def test_images_the_network_cannot_take_give_one_clear_error(
    net: TransformerNet, image: object, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        Stylizer(net, precision="fp32").stylize(image, strength=0.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # Before: a RuntimeError from inside the tiling, and int()'s own message.
        ({"tile_overlap": -3}, "tile_overlap=-3: must be at least 0 and less than half of tile_size=1024"),
        ({"tile_above": "big"}, r"tile_above=big: auto \(the device's choice\) or 1 or more pixels"),
        # Before: taken as they were, tiles of 0 px and overlaps wider than half a tile.
        ({"tile_size": 0}, "tile_size=0: must be a whole number of pixels, 64 or more"),
        # Before: blamed on tile_overlap.
        ({"tile_size": 100.5}, "tile_size=100.5: must be a whole number of pixels"),
        ({"tile_size": 64, "tile_overlap": 40}, "tile_overlap=40: .* less than half of tile_size=64"),
        # Before: taken as 1, a bool being an int to Python: every image tiled, a 1 pixel overlap.
        ({"tile_above": True}, r"tile_above=True: auto \(the device's choice\) or 1 or more pixels"),
        ({"tile_overlap": True}, "tile_overlap=True: must be at least 0"),
    ],
)
def test_wrong_tiling_options_are_one_clear_error(net: TransformerNet, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Stylizer(net, **{"tile_above": 100, **options})


def test_strength_zero_returns_the_input_and_blends_linearly(net: TransformerNet, photo: torch.Tensor) -> None:
    stylizer = Stylizer(net)
    assert torch.equal(stylizer.stylize(photo, strength=0.0), photo)
    assert stylizer.stylize(photo.half(), strength=0.0).dtype == torch.float32  # as at every strength
    full = stylizer.stylize(photo)
    half = stylizer.stylize(photo, strength=0.5)
    assert torch.allclose(half, 0.5 * full + 0.5 * photo, atol=1e-5)
    with pytest.raises(ValueError, match="strength"):
        stylizer.stylize(photo, strength=1.5)


def test_preserve_color_keeps_chroma_and_takes_luminance(net: TransformerNet, photo: torch.Tensor) -> None:
    stylizer = Stylizer(net)
    kept = stylizer.stylize(photo, preserve_color=True)
    ycc_kept, ycc_photo, ycc_styled = (_rgb_to_ycbcr(x) for x in (kept, photo, stylizer.stylize(photo)))
    inside = (kept > 0.01) & (kept < 0.99)  # where no channel was clipped to [0, 1]
    inside = inside.all(dim=1, keepdim=True).expand_as(ycc_kept)
    chroma = (ycc_kept - ycc_photo)[:, 1:][inside[:, 1:]].abs()
    assert chroma.max() < 1e-4
    luma = (ycc_kept - ycc_styled)[:, :1][inside[:, :1]].abs()
    assert luma.mean() < 1e-3


def test_max_size_downscales_first_and_returns_the_original_size(net: TransformerNet, photo: torch.Tensor) -> None:
    seen = []
    stylizer = Stylizer(net)
    original = stylizer.forward
    stylizer.forward = lambda x: seen.append(tuple(x.shape[-2:])) or original(x)
    out = stylizer.stylize(photo, max_size=100)
    assert seen == [(66, 100)] and out.shape == photo.shape


@pytest.mark.parametrize("max_size", [-5, 0, 15])
def test_a_max_size_the_command_line_refuses_is_refused_in_its_words(
    net: TransformerNet, photo: torch.Tensor, max_size: int
) -> None:
    """Before: -5 let the network see 1x1 pixels and gave a flat image; 0 was taken as no limit."""
    image = Image.open(SAMPLES / "coffee.jpg")
    with pytest.raises(ValueError, match=rf"^max_size={max_size}: 16 or more, or null$"):
        Stylizer(net).stylize(image, max_size=max_size)


def test_pil_in_pil_out_keeps_alpha(net: TransformerNet) -> None:
    rgba = Image.open(SAMPLES / "chelsea.jpg").convert("RGBA")
    alpha = Image.linear_gradient("L").resize(rgba.size)
    rgba.putalpha(alpha)
    out = Stylizer(net).stylize(rgba)
    assert out.mode == "RGBA" and out.size == rgba.size
    assert list(out.getchannel("A").getdata()) == list(alpha.getdata())


def test_pil_in_pil_out_upright_for_an_exif_rotated_photo(net: TransformerNet) -> None:
    """The README said "the same size out": a 96x64 JPEG with orientation 6 comes back 64x96, as infer.py writes it."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    Image.open(SAMPLES / "chelsea.jpg").resize((96, 64)).save(buffer, "JPEG", exif=exif)
    rotated = Image.open(buffer)
    assert rotated.size == (96, 64)
    stylizer = Stylizer(net, precision="fp32")
    out = stylizer.stylize(rotated)
    assert out.size == (64, 96)
    upright = np.asarray(stylizer.stylize(ImageOps.exif_transpose(rotated)))
    assert np.array_equal(np.asarray(out), upright)


def _photo_in_mode(photo: Image.Image, mode: str) -> Image.Image:
    grey = np.asarray(photo.convert("L"))
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)  # full 16-bit range
    if mode == "I":
        return Image.fromarray(grey.astype(np.uint16) * 257).convert("I")
    if mode == "F":
        return Image.fromarray(grey.astype(np.float32) / 255)
    return photo.convert(mode)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "LA", "La", "PA", "RGBa", "I;16", "I", "F", "1"])
def test_every_pillow_mode_decodes_to_rgb(mode: str) -> None:
    photo = Image.open(SAMPLES / "coffee.jpg")
    image = _photo_in_mode(photo, mode)
    assert image.mode == mode
    picture = decode(image)
    assert picture.rgb.shape == (3, photo.height, photo.width)
    assert picture.rgb.min() >= 0 and picture.rgb.max() <= 1
    grey = torch.from_numpy(np.asarray(photo.convert("L"), dtype=np.float32)) / 255
    if mode in ("L", "LA", "La", "I;16", "I", "F"):
        assert (picture.rgb[0] - grey).abs().max() < 1.5 / 255  # 16-bit and float land on the same scale
    if mode == "CMYK":
        assert (picture.rgb - decode(photo).rgb).abs().mean() < 0.02
    assert (picture.alpha is not None) == (mode in ("LA", "La", "PA", "RGBa"))


def test_a_16_bit_grey_png_keeps_its_transparent_value_as_alpha(tmp_path: Path) -> None:
    grey = Image.fromarray((np.arange(48 * 64, dtype=np.uint16) * 20).reshape(48, 64))
    grey.save(tmp_path / "grey16.png", transparency=int(np.asarray(grey)[0, 5]))  # the PNG's tRNS value
    for dtype, opaque in ((torch.float32, 1), (torch.uint8, 255)):
        picture = read_picture(tmp_path / "grey16.png", dtype)
        assert picture.alpha is not None and picture.alpha.shape == (1, 48, 64) and picture.alpha.dtype == dtype
        assert picture.alpha[0, 0, 5] == 0 and int((picture.alpha == opaque).sum()) == 48 * 64 - 1


def test_exif_orientation_is_applied() -> None:
    photo = Image.open(SAMPLES / "chelsea.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", exif=exif, quality=95)
    rotated = decode(Image.open(buffer))
    expected = decode(photo.transpose(Image.Transpose.ROTATE_270)).rgb
    assert rotated.rgb.shape == expected.shape == (3, photo.width, photo.height)
    assert (rotated.rgb - expected).abs().mean() < 0.02  # only JPEG re-encoding differs


def test_decompression_bombs_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from nst_ff.images import ImageError, read_picture

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # rocket.jpg has 273k pixels, > 2x the limit
    with pytest.raises(ImageError, match="decompression bomb"):
        read_picture(SAMPLES / "rocket.jpg")


def test_stylize_returns_every_image_of_a_batch(net: TransformerNet, photo: torch.Tensor) -> None:
    stylizer = Stylizer(net, precision="fp32")
    batch = torch.cat([photo, photo.flip(-1), 1 - photo])
    out = stylizer.stylize(batch, strength=0.7, preserve_color=True)
    assert out.shape == batch.shape and out.device == batch.device
    for image, styled in zip(batch, out, strict=True):
        assert torch.allclose(stylizer.stylize(image, strength=0.7, preserve_color=True), styled, atol=1e-5)
    assert psnr(out[0], out[2]) < 30  # different inputs, different outputs: no copy of the first


def test_a_short_batch_runs_padded_to_the_size_its_shape_ran_as(net: TransformerNet, photo: torch.Tensor) -> None:
    """What a compiled Stylizer does (forced here): a folder's or video's last batch reuses the shape
    that was compiled and autotuned, and returns only its own images, unchanged by the padding."""
    stylizer = Stylizer(net, precision="fp32")
    assert not stylizer.pad_short_batches  # eager: padding would only cost time
    stylizer.pad_short_batches = True
    sizes = []
    network = stylizer.forward
    stylizer.forward = lambda x: sizes.append(len(x)) or network(x)
    batch = torch.cat([photo, photo.flip(-1), 1 - photo])
    full = stylizer(batch)
    short = stylizer(batch[1:])
    other_shape = stylizer(batch[:2, :, :100])
    assert sizes == [3, 3, 2]  # only a shape that ran as a larger batch is padded
    assert short.shape == batch[1:].shape and torch.allclose(short, full[1:], atol=1e-5)
    assert torch.allclose(other_shape, reference(net, batch[:2, :, :100]), atol=1e-5)


def test_from_file_takes_a_shipped_models_name_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    photo = load_image(SAMPLES / "rocket.jpg", 128)
    by_name = Stylizer.from_file("starry_night_fast", precision="fp32")(photo)
    by_path = Stylizer.from_file(PROJECT_ROOT / "checkpoints" / "starry_night_fast.safetensors", precision="fp32")(
        photo
    )
    assert torch.equal(by_name, by_path)
    with pytest.raises(UserError, match="no_such_style: no such model file or shipped model"):
        Stylizer.from_file("no_such_style")
