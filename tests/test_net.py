import pytest
import torch

from nst_ff.net import TransformerNet


@pytest.fixture(scope="module")
def net() -> TransformerNet:
    torch.manual_seed(0)
    return TransformerNet(channels=8, num_res_blocks=1).eval()


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (3, 5), (15, 16), (17, 33), (64, 64), (255, 130)])
def test_output_has_input_size_and_each_image_is_stylised_on_its_own(
    net: TransformerNet, size: tuple[int, int]
) -> None:
    image = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = net(image)
        first_alone = net(image[:1])
    assert out.shape == image.shape
    # Instance norm: an image's output does not depend on the others in its batch (padding included).
    assert torch.allclose(out[:1], first_alone, atol=1e-5)
    if size != (1, 1):  # a single pixel normalises to nothing: any 1x1 image gives the same output
        assert not torch.allclose(out[0], out[1], atol=1e-3)


def test_padding_does_not_leak_into_the_crop(net: TransformerNet) -> None:
    # The crop keeps the top-left corner: the image content there must drive the output there.
    image = torch.rand(1, 3, 30, 30)
    brighter = image.clone()
    brighter[..., :5, :5] = 1.0
    with torch.no_grad():
        a, b = net(image), net(brighter)
    assert (a[..., :5, :5] - b[..., :5, :5]).abs().mean() > 1e-3


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
@pytest.mark.parametrize("upsample", ["nearest", "bilinear", "transposed"])
def test_config_variants_build_and_keep_size(norm: str, upsample: str) -> None:
    net = TransformerNet(channels=4, num_res_blocks=2, norm=norm, upsample=upsample).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 21, 10)).shape == (1, 3, 21, 10)
    assert net.config == {"channels": 4, "num_res_blocks": 2, "norm": norm, "upsample": upsample}


def test_residual_block_count_and_width() -> None:
    net = TransformerNet(channels=16, num_res_blocks=3)
    blocks = [m for m in net.modules() if type(m).__name__ == "ResidualBlock"]
    assert len(blocks) == 3
    assert net.body[0][1].kernel_size == (9, 9) and net.body[-1][1].kernel_size == (9, 9)
    assert net.body[2][1].stride == (2, 2) and net.body[2][1].out_channels == 64


def test_bad_inputs_are_refused_clearly(net: TransformerNet) -> None:
    with pytest.raises(ValueError, match="empty image"):
        net(torch.rand(1, 3, 0, 5))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="unknown norm"):
        TransformerNet(norm="layer")
    with pytest.raises(ValueError, match="unknown upsample"):
        TransformerNet(upsample="pixelshuffle")
