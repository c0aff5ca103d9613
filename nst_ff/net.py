"""Johnson et al. (2016) image transformation network.

Image convention (the one place it is defined for the whole package): images are float tensors of
shape (N, 3, H, W), RGB, values in [0, 1]. ``TransformerNet`` takes and returns images in that
convention; the output keeps the input's height and width exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("instance", "batch", "none")
UPSAMPLES = ("nearest", "bilinear", "transposed")

# The two stride-2 convolutions need sizes divisible by 4, and reflection padding needs every
# feature map larger than its padding: 16 keeps the 4x4 bottleneck valid for any input size.
_MULTIPLE = 4
_MIN_SIZE = 16


class InstanceNorm(nn.InstanceNorm2d):
    """nn.InstanceNorm2d(affine=True) with the same parameters and maths, computed image by image with
    ``F.batch_norm`` (over one image, batch statistics are the instance statistics). The aten
    instance-norm kernel converts channels_last inputs to contiguous and back, which cost as much as
    the convolutions' speed-up from channels_last; var_mean and a separate scale-and-shift took 3.5x
    (fp32) to 6.7x (bf16) as long as batch_norm's fused kernel (CPU, 16x1024x1024, channels_last).

    ``shared_stats`` (set by ``nst_ff.tiling``) replaces the per-image statistics, so that tiles of
    one image are all normalised like the whole image. ``fused`` (set by ``nst_ff.execution``) runs
    torch's own kernel instead: on CUDA in NCHW it is one fused kernel where the scale-and-shift form
    launches about eleven small ones.
    """

    shared_stats: tuple[torch.Tensor, torch.Tensor] | None = None
    fused: bool = False

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(variance, mean) per image and channel, in float32 even under bf16/fp16 autocast."""
        return torch.var_mean(x.float(), dim=(-2, -1), keepdim=True, correction=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and self.shared_stats is None:
            return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        if self.shared_stats is None and not torch.compiler.is_compiling():
            out = [F.batch_norm(image, None, None, self.weight, self.bias, True, 0.0, self.eps) for image in x.split(1)]
            return out[0] if len(out) == 1 else torch.cat(out)
        # Traced (torch.compile, torch.export) or tiled: one graph for any batch size, which the compiler fuses.
        var, mean = self.shared_stats or self.statistics(x)
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1)
        shift = self.bias.view(1, -1, 1, 1) - mean * scale
        return x * scale.to(x.dtype) + shift.to(x.dtype)


class ReflectionPad(nn.ReflectionPad2d):
    """nn.ReflectionPad2d; ``by_slices`` (set by ``nst_ff.execution``) builds the same padding from copies of
    flipped slices (``reflect_by_copies``), which keep channels_last: CUDA's reflection_pad2d writes NCHW
    only, so a channels_last network is converted back and forth around every padded convolution. Compiled,
    the compiler generates the padding itself, fused into the convolution's input."""

    by_slices: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.by_slices and not torch.compiler.is_compiling():
            return reflect_by_copies(x, self.padding[0])
        return super().forward(x)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return InstanceNorm(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: choose one of {', '.join(NORMS)}")


class ConvLayer(nn.Sequential):
    """Reflection-padded convolution (no zero-padding borders), then norm and ReLU if asked.

    ``separable`` factors the convolution into a per-channel (depthwise) one and a 1x1 one: about
    ``kernel**2`` times fewer multiply-adds when ``cin`` is wide (MobileNet, Howard et al. 2017)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        norm: str = "instance",
        relu: bool = True,
        separable: bool = False,
    ) -> None:
        conv: list[nn.Module] = (
            [nn.Conv2d(cin, cin, kernel, stride, groups=cin), nn.Conv2d(cin, cout, 1)]
            if separable
            else [nn.Conv2d(cin, cout, kernel, stride)]
        )
        layers: list[nn.Module] = [ReflectionPad(kernel // 2), *conv]
        if norm != "none":
            layers.append(_norm(norm, cout))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: str, separable: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvLayer(channels, channels, 3, norm=norm, separable=separable),
            ConvLayer(channels, channels, 3, norm=norm, relu=False, separable=separable),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


# Nearest x2 upsampling, reflection padding by 1 and a 3x3 convolution equal a stride-2 transposed convolution
# with a 4x4 kernel whose taps are the 3x3 one's summed per output phase (row k sums the rows it marks here,
# likewise for columns), over the input padded by 1 by replication (the reflection of a nearest-upsampled border
# row is its own source row) and cropped by 3 on each side: 16 multiply-adds per input pixel where
# resize-then-convolve does 36, and no upsampled copy in memory.
_SUBPIXEL_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def subpixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """A (cout, cin, 3, 3) convolution weight -> the (cin, cout, 4, 4) transposed-convolution weight of
    ``Upsample``'s sub-pixel form, summed in float32 or better."""
    summed = weight.to(torch.promote_types(weight.dtype, torch.float32))
    taps = _SUBPIXEL_TAPS.to(summed)
    return torch.einsum("ak,oikl,bl->ioab", taps, summed, taps).to(weight.dtype)


class Upsample(nn.Sequential):
    """x2 upsampling. Resize-then-convolve avoids the checkerboard of transposed convolutions
    (Odena et al. 2016); ``transposed`` is kept for comparison with the original paper.

    ``subpixel`` (set by ``nst_ff.execution``) computes ``nearest`` resize-then-convolve in its equal
    transposed-convolution form (``subpixel_weight``): the same function and parameters, fewer operations."""

    subpixel: bool = False

    def __init__(self, cin: int, cout: int, mode: str, norm: str) -> None:
        if mode == "transposed":
            layers: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)]
            if norm != "none":
                layers.append(_norm(norm, cout))
            layers.append(nn.ReLU(inplace=True))
        elif mode in ("nearest", "bilinear"):
            layers = [nn.Upsample(scale_factor=2, mode=mode), ConvLayer(cin, cout, 3, norm=norm)]
        else:
            raise ValueError(f"unknown upsample mode {mode!r}: choose one of {', '.join(UPSAMPLES)}")
        super().__init__(*layers)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.subpixel and self.mode == "nearest"):
            return super().forward(x)
        _, pad_conv = self
        conv = pad_conv[1]
        # Padded by concatenation: compiled training failed on F.pad's replicate mode in channels_last (torch
        # 2.14: inductor's stride check in replication_pad2d_backward); as fast in eager.
        x = torch.cat([x[..., :1, :], x, x[..., -1:, :]], dim=-2)
        x = torch.cat([x[..., :1], x, x[..., -1:]], dim=-1)
        x = F.conv_transpose2d(x, subpixel_weight(conv.weight), conv.bias, stride=2, padding=3)
        for layer in list(pad_conv)[2:]:  # norm, ReLU
            x = layer(x)
        return x


def space_to_depth_weight(weight: torch.Tensor) -> torch.Tensor:
    """A (cout, cin, k, k) convolution weight (k odd) -> the (4 cout, 4 cin, k // 2 + 1, k // 2 + 1) weight of
    ``OutputLayer``'s sub-pixel form, channels ordered phase first (``to_blocks``): output phase (a, b) of
    channel c, input phase (s, t) of channel ci and tap (ky, kx) take the original tap (2 ky + s - a,
    2 kx + t - b), zero where that falls outside."""
    cout, cin, k, _ = weight.shape
    taps = k // 2 + 1
    steps, phases = torch.arange(taps, device=weight.device), torch.arange(2, device=weight.device)
    # (a, s, ky) -> the tap's row in the kernel padded by one zero on each side
    index = 2 * steps[None, None, :] + phases[None, :, None] - phases[:, None, None] + 1
    taken = F.pad(weight, (1, 1, 1, 1))[:, :, index][..., index]  # (c, ci, a, s, ky, b, t, kx)
    return taken.permute(2, 5, 0, 3, 6, 1, 4, 7).reshape(4 * cout, 4 * cin, taps, taps)


def to_blocks(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) with H and W even -> (N, 4C, H/2, W/2): each 2x2 block of pixels as the channels of one,
    ordered (row phase, column phase, channel). ``F.pixel_unshuffle`` orders them channel first, which in
    channels_last memory gathers single values (6x slower here than moving rows of 2C values)."""
    if torch.compiler.is_exporting():
        # torch.export cannot prove that a symbolic height and width are even, as the reshapes below need:
        # strided slices instead (ONNX Slice).
        return torch.cat([x[..., row::2, col::2] for row in (0, 1) for col in (0, 1)], dim=1)
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2 * c)
    return rows.transpose(2, 3).reshape(n, h // 2, w // 2, 4 * c).permute(0, 3, 1, 2)


def from_blocks(x: torch.Tensor) -> torch.Tensor:
    """The inverse of ``to_blocks``."""
    if torch.compiler.is_exporting():  # as in to_blocks: channels reordered for pixel_shuffle (ONNX DepthToSpace)
        return F.pixel_shuffle(x.unflatten(1, (4, -1)).transpose(1, 2).flatten(1, 2), 2)
    n, c4, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n, h, w, 2, c4 // 2)
    return rows.transpose(2, 3).reshape(n, 2 * h, 2 * w, c4 // 4).permute(0, 3, 1, 2)


def reflect_by_slices(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(x, (pad,) * 4, mode="reflect")`` from flipped slices and concatenations."""
    x = torch.cat([x[..., 1 : pad + 1, :].flip(-2), x, x[..., -pad - 1 : -1, :].flip(-2)], dim=-2)
    return torch.cat([x[..., 1 : pad + 1].flip(-1), x, x[..., -pad - 1 : -1].flip(-1)], dim=-1)


def reflect_by_copies(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``reflect_by_slices`` for eager execution: one new tensor in ``x``'s memory format, ``x`` copied into its
    middle once and the borders copied from there, where the two concatenations copy the whole image twice
    (CPU, channels_last, 32x1024x1024 bf16, padding 4: 18.8 ms against 36.9). Inductor fuses the
    concatenations into their consumer, so compiled code keeps those."""
    if pad == 0:  # a 1x1 end layer's
        return x
    height, width = x.shape[-2:]
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty(
        (*x.shape[:-2], height + 2 * pad, width + 2 * pad), dtype=x.dtype, device=x.device, memory_format=layout
    )
    out[..., pad:-pad, pad:-pad] = x
    out[..., :pad, pad:-pad] = x[..., 1 : pad + 1, :].flip(-2)
    out[..., -pad:, pad:-pad] = x[..., -pad - 1 : -1, :].flip(-2)
    out[..., :pad] = out[..., pad + 1 : 2 * pad + 1].flip(-1)  # the corners come with the columns
    out[..., -pad:] = out[..., -2 * pad - 1 : -pad - 1].flip(-1)
    return out


class OutputLayer(ConvLayer):
    """The last layer: reflection padding and a ``kernel``-sized convolution down to 3 channels at full resolution.

    ``subpixel`` (set by ``nst_ff.execution``) computes it on 2x2 blocks of pixels (space to depth): the padded
    input's four pixel phases as channels (``to_blocks``), a convolution to the output's four phases at half
    resolution (``space_to_depth_weight``), then the phases back in place. The same function and parameters,
    with 12 output channels instead of 3 (CPU convolution kernels compute 8 or 16 output channels at once)."""

    subpixel: bool = False

    def __init__(self, cin: int, kernel: int) -> None:
        super().__init__(cin, 3, kernel, norm="none", relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.subpixel:
            return super().forward(x)
        pad, conv = self
        # Compiled, reflection padding from flipped slices: inductor's code for F.pad's reflect mode fused with the
        # blocks took 16 ms for 16 channels at 1024x1024 (73 for 32) against 4 from slices; eager, F.pad is faster.
        x = reflect_by_slices(x, pad.padding[0]) if torch.compiler.is_compiling() else pad(x)
        x = to_blocks(x)  # TransformerNet's sizes are even here
        x = F.conv2d(x, space_to_depth_weight(conv.weight), conv.bias.repeat(4))
        return from_blocks(x)


class TransformerNet(nn.Module):
    """9x9 conv in, two stride-2 downsamplings, residual blocks, two x2 upsamplings, 9x9 conv out.

    ``channels`` is the width of the first layer (32 in the paper; the bottleneck has 4x that).
    The light variants (``conf/model/fast.yaml``) change only these settings: ``separable`` residual
    blocks and a smaller ``end_kernel`` for the two full-resolution end layers (9 in the paper).
    """

    def __init__(
        self,
        channels: int = 32,
        num_res_blocks: int = 5,
        norm: str = "instance",
        upsample: str = "nearest",
        separable: bool = False,
        end_kernel: int = 9,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
        if end_kernel < 1 or end_kernel % 2 == 0:
            raise ValueError(f"end_kernel must be odd and positive (output size = input size), got {end_kernel}")
        c = channels
        self.config = {
            "channels": channels,
            "num_res_blocks": num_res_blocks,
            "norm": norm,
            "upsample": upsample,
            "separable": separable,
            "end_kernel": end_kernel,
        }
        self.body = nn.Sequential(
            ConvLayer(3, c, end_kernel, norm=norm),
            ConvLayer(c, 2 * c, 3, stride=2, norm=norm),
            ConvLayer(2 * c, 4 * c, 3, stride=2, norm=norm),
            *(ResidualBlock(4 * c, norm, separable) for _ in range(num_res_blocks)),
            Upsample(4 * c, 2 * c, upsample, norm),
            Upsample(2 * c, c, upsample, norm),
            OutputLayer(c, end_kernel),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) image batch, got shape {tuple(image.shape)}")
        height, width = image.shape[-2:]
        if height == 0 or width == 0:
            raise ValueError(f"cannot stylise an empty image ({height}x{width})")
        # Written so that torch.export (the ONNX exporter) keeps height and width symbolic: no branch on the
        # sizes, torch.sym_max instead of max, and the crop back as a negative pad, whose output size the
        # exporter can prove for every input size (a slice makes it guard on the one size it traced).
        padded_h = _MULTIPLE * torch.sym_max(_MIN_SIZE // _MULTIPLE, (height + _MULTIPLE - 1) // _MULTIPLE)
        padded_w = _MULTIPLE * torch.sym_max(_MIN_SIZE // _MULTIPLE, (width + _MULTIPLE - 1) // _MULTIPLE)
        # Replicate, not reflect: reflection cannot pad a 1-pixel image.
        image = F.pad(image, (0, padded_w - width, 0, padded_h - height), mode="replicate")
        # A sigmoid keeps the output a valid image without clamping away the gradient.
        out = torch.sigmoid(self.body(image))
        return F.pad(out, (0, width - padded_w, 0, height - padded_h))
