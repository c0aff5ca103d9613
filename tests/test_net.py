import pytest
import torch
import torch.nn.functional as F

from nst_ff.net import OutputLayer, TransformerNet, Upsample, reflect_by_copies, reflect_by_slices


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


@pytest.mark.parametrize("pad", [0, 1, 4])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_reflection_padding_by_slices_and_by_copies_equal_torchs(pad: int, layout: torch.memory_format) -> None:
    x = torch.randn(2, 5, 9, 13).to(torch.bfloat16).contiguous(memory_format=layout)
    expected = F.pad(x.float(), (pad,) * 4, mode="reflect").to(x.dtype)
    assert torch.equal(reflect_by_slices(x, pad), expected)  # compiled code's form (layout: the compiler's)
    padded = reflect_by_copies(x, pad)  # eager's
    assert torch.equal(padded, expected)
    assert padded.is_contiguous(memory_format=layout)  # CUDA's own padding would write NCHW
    # Gradients too (a by_slices network could be trained): each input pixel gets the sum of its copies'.
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(1, 2, 6 + 2 * pad, 7 + 2 * pad, dtype=torch.float64)
    (grad,) = torch.autograd.grad((F.pad(x, (pad,) * 4, mode="reflect") * weights).sum(), x)
    assert torch.allclose(torch.autograd.grad((reflect_by_copies(x, pad) * weights).sum(), x)[0], grad)


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
    assert net.config == {
        "channels": 4,
        "num_res_blocks": 2,
        "norm": norm,
        "upsample": upsample,
        "separable": False,
        "end_kernel": 9,
    }


@pytest.mark.parametrize(("separable", "end_kernel"), [(True, 9), (False, 5), (True, 3)])
@pytest.mark.parametrize("size", [(1, 1), (21, 10), (33, 47)])
def test_light_variants_build_and_keep_size(separable: bool, end_kernel: int, size: tuple[int, int]) -> None:
    net = TransformerNet(channels=4, num_res_blocks=2, separable=separable, end_kernel=end_kernel).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, *size) and out.min() >= 0 and out.max() <= 1
    assert net.body[0][1].kernel_size == (end_kernel, end_kernel) == net.body[-1][1].kernel_size
    depthwise = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == (4 if separable else 0)  # two per residual block
    assert all(m.groups == m.in_channels == 16 for m in depthwise)


def test_separable_blocks_are_lighter() -> None:
    def params(net: TransformerNet) -> int:
        return sum(p.numel() for p in net.parameters())

    assert params(TransformerNet(channels=16, separable=True)) < params(TransformerNet(channels=16)) / 3


def test_config_of_older_model_files_still_builds_the_same_net() -> None:
    """Model files written before the light options record four keys; the defaults rebuild that net."""
    old = TransformerNet(**{"channels": 8, "num_res_blocks": 1, "norm": "instance", "upsample": "nearest"})
    assert old.config["separable"] is False and old.config["end_kernel"] == 9
    assert set(old.state_dict()) == set(TransformerNet(channels=8, num_res_blocks=1).state_dict())


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
    with pytest.raises(ValueError, match="end_kernel must be odd"):
        TransformerNet(end_kernel=4)


def _use_subpixel(net: TransformerNet, on: bool, kinds: tuple[type, ...] = (Upsample, OutputLayer)) -> None:
    for module in net.modules():
        if isinstance(module, kinds):
            module.subpixel = on


@pytest.mark.parametrize("size", [(3, 5), (16, 16), (21, 10), (33, 47)])
@pytest.mark.parametrize(("norm", "end_kernel"), [("instance", 9), ("none", 9), ("instance", 3), ("instance", 1)])
def test_subpixel_layers_compute_the_same_function(size: tuple[int, int], norm: str, end_kernel: int) -> None:
    # Float64: the two forms must agree to rounding, in the output and in every parameter's gradient, so that
    # training may run either and the same weights serve both.
    torch.manual_seed(0)
    net = TransformerNet(channels=4, num_res_blocks=1, norm=norm, end_kernel=end_kernel).double()
    image = torch.rand(2, 3, *size, dtype=torch.float64)
    outputs, gradients = [], []
    for on in (False, True):
        _use_subpixel(net, on)
        net.zero_grad()
        out = net(image)
        (out * torch.linspace(0, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        outputs.append(out.detach())
        gradients.append([p.grad.clone() for p in net.parameters()])
    assert torch.allclose(outputs[0], outputs[1], rtol=0, atol=1e-12)
    for plain, subpixel in zip(*gradients, strict=True):
        assert torch.allclose(plain, subpixel, rtol=1e-9, atol=1e-12)


def test_subpixel_upsampling_leaves_the_other_upsamplings_alone() -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 20, 20)
    for upsample in ("bilinear", "transposed"):
        net = TransformerNet(channels=4, num_res_blocks=1, upsample=upsample).eval()
        with torch.no_grad():
            plain = net(image)
            _use_subpixel(net, True, kinds=(Upsample,))
            assert torch.equal(net(image), plain)
