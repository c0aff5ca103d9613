"""Perceptual losses on a frozen ImageNet VGG: content (feature MSE), style (Gram MSE), total variation.

Training and the per-image optimization baseline both use ``PerceptualLoss``; there is no other
implementation of these losses in the package.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nst_ff.images import ImageError, load_image
from nst_ff.weights import VGG_BLOCKS, WeightsError, load_vgg_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg_layer_names(arch: str) -> list[str]:
    """Names of torchvision's VGG ``features`` modules in order: conv1_1, relu1_1, ..., pool5."""
    names = []
    for block, convs in enumerate(VGG_BLOCKS[arch], start=1):
        for i in range(1, convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


def _vgg_features(arch: str, depth: int) -> nn.Sequential:
    """torchvision's VGG ``features`` stack (same indices), cut after ``depth`` modules."""
    layers: list[nn.Module] = []
    channels = 3
    for block, convs in enumerate(VGG_BLOCKS[arch]):
        width = min(64 * 2**block, 512)
        for _ in range(convs):
            # Not in-place: a requested conv output must survive the ReLU after it.
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers[:depth])


class VGGEncoder(nn.Module):
    """Frozen VGG that returns the named layers asked for from one forward pass.

    Takes images in [0, 1] (ImageNet normalisation happens inside) and stops after the deepest layer
    it was built for. Always in eval mode; it has no trainable parameters.
    """

    def __init__(
        self, arch: str, layers: Iterable[str], weights: str = "torchvision", weights_path: str | None = None
    ) -> None:
        super().__init__()
        if arch not in VGG_BLOCKS:
            raise ValueError(f"unknown VGG {arch!r}: choose one of {', '.join(VGG_BLOCKS)}")
        names = vgg_layer_names(arch)
        self.layers = list(dict.fromkeys(layers))
        unknown = [name for name in self.layers if name not in names]
        if unknown or not self.layers:
            raise ValueError(f"unknown {arch} layers {unknown or '(none given)'}: choose from {', '.join(names)}")
        depth = max(names.index(name) for name in self.layers) + 1
        self.arch = arch
        self.names = names[:depth]
        self.features = _vgg_features(arch, depth)
        # Each 2x2 pooling halves the image: a side shorter than 2**pools comes out of the last one empty.
        self.min_side = 2 ** sum(isinstance(layer, nn.MaxPool2d) for layer in self.features)
        wanted = self.features.state_dict()
        state = {k: v for k, v in load_vgg_weights(arch, weights, weights_path).items() if k in wanted}
        for key, value in wanted.items():  # a file of the other VGG, or of another network: one line, not torch's
            if key not in state or state[key].shape != value.shape:
                found = (
                    f"shape {tuple(state[key].shape)} instead of {tuple(value.shape)}" if key in state else "missing"
                )
                raise WeightsError(
                    f"{weights_path or weights}: not {arch} weights ({key}: {found}); this loss preset's network is "
                    f"{arch} (loss=johnson2016: vgg16, loss=gatys2016: vgg19): give {arch} weights or the preset "
                    "of the file's network"
                )
        self.features.load_state_dict(state)
        for conv in self.features:
            if isinstance(conv, nn.Conv2d):
                # Frozen weights become non-persistent buffers: they always come from the weights source,
                # so checkpoints of models that use this encoder stay free of ~60 MB of VGG.
                weight, bias = conv.weight.detach(), conv.bias.detach()
                del conv.weight, conv.bias
                conv.register_buffer("weight", weight, persistent=False)
                conv.register_buffer("bias", bias, persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> VGGEncoder:
        return super().train(False)

    def forward(self, image: torch.Tensor, layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        wanted = set(self.layers if layers is None else layers)
        x = (image - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        for name, module in zip(self.names, self.features, strict=True):
            x = module(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        return out


class _Gram(torch.autograd.Function):
    """``flat.mT @ flat`` for (B, N, C) features, in their own type (bf16 products accumulate in float32).

    Both operands are one tensor, so the gradient is one product, ``flat @ (grad + grad.mT)``, where autograd's
    own takes one per operand and adds them."""

    @staticmethod
    def forward(ctx: Any, flat: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flat)
        return flat.mT @ flat

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (flat,) = ctx.saved_tensors
        symmetric = grad + grad.mT
        if flat.stride(-1) == 1:
            return flat @ symmetric
        return (symmetric @ flat.mT).mT  # the same product, laid out like ``flat``: no copy to reshape it back


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrices normalised by C*H*W, returned in float32 (float64 stays).

    Computed in the features' type: bf16 features (training under bf16 autocast) give bf16 products, rounded
    once at the end. Against float32 products of the same features that changed a trained network's gradient
    by 0.45% (relative norm; autocast itself changes it by 12% against float32 training) and its loss by 0.008%,
    at a quarter of the time on CPUs (no float32 copies of the features, bf16 instructions). fp16 features are
    multiplied in float32: sums over a layer's pixels overflow fp16 (max 65504), where bf16 has float32's range."""
    b, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        if features.dtype == torch.float16:
            features = features.float()
        if features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous():
            flat = features.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view of channels_last memory
        else:
            flat = features.reshape(b, c, h * w).mT  # a view of NCHW memory
        gram = _Gram.apply(flat)
        return gram.to(torch.promote_types(gram.dtype, torch.float32)) / (c * h * w)


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (penalises high-frequency noise)."""
    dy = image[..., 1:, :] - image[..., :-1, :]
    dx = image[..., :, 1:] - image[..., :, :-1]
    return dy.float().pow(2).mean() + dx.float().pow(2).mean()


@dataclass
class LossTerms:
    """Weighted total plus the unweighted parts (the weights are those of ``PerceptualLoss``)."""

    total: torch.Tensor
    content: torch.Tensor
    style: torch.Tensor
    tv: torch.Tensor
    style_layers: dict[str, torch.Tensor] = field(default_factory=dict)


class PerceptualLoss(nn.Module):
    """``content_weight * content + style_weight * style + tv_weight * tv``.

    ``content`` is the per-layer-weighted MSE between VGG features of the output and of the content
    image; ``style`` the per-layer-weighted MSE between Gram matrices of the output and of the style
    image. Style targets are computed once, by ``set_style``.
    """

    def __init__(
        self,
        encoder: VGGEncoder,
        content_layers: Mapping[str, float],
        style_layers: Mapping[str, float],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
    ) -> None:
        super().__init__()
        missing = [name for name in (*content_layers, *style_layers) if name not in encoder.layers]
        if missing:
            raise ValueError(f"the encoder does not compute layers {missing}")
        self.encoder = encoder
        self.content_layers = dict(content_layers)
        self.style_layers = dict(style_layers)
        self.content_weight = float(content_weight)
        self.style_weight = float(style_weight)
        self.tv_weight = float(tv_weight)
        self.has_style = False

    @classmethod
    def from_config(
        cls,
        vgg: str,
        content_layers: Mapping[str, float],
        style_layers: Mapping[str, float],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
        weights: Mapping[str, str | None] | None = None,
        **_: object,
    ) -> PerceptualLoss:
        """Build from a ``conf/loss`` preset (extra keys such as ``style_size`` are for the caller)."""
        weights = dict(weights or {})
        encoder = VGGEncoder(
            vgg, [*content_layers, *style_layers], weights.get("source") or "torchvision", weights.get("path")
        )
        return cls(encoder, content_layers, style_layers, content_weight, style_weight, tv_weight)

    @classmethod
    def for_style(cls, style_image: str | Path, **preset: Any) -> PerceptualLoss:
        """The loss of a ``conf/loss`` preset with the Gram targets of the painting in the file ``style_image``,
        read with its long side at the preset's ``style_size``. The one place a style's loss is built."""
        loss = cls.from_config(**preset)
        image = load_image(style_image, preset.get("style_size"))
        at = f"{style_image}: at loss.style_size={preset.get('style_size')}"
        loss.check_size(tuple(image.shape[-2:]), at, "loss.style_size")
        loss.set_style(image)
        return loss

    def check_size(self, size: tuple[int, int], what: str, option: str) -> None:
        """A one-line ``ImageError`` for an image of ``size`` (height, width) too narrow for the VGG's poolings, where
        torch's error came from deep inside the encoder. ``what``: the image, as the user knows it; ``option``: the
        size to raise."""
        height, width = size
        if min(height, width) < self.encoder.min_side:
            raise ImageError(
                f"{what} the image is {width}x{height} px, too narrow for the loss's VGG layers (at least "
                f"{self.encoder.min_side} px a side); raise {option} or crop the image nearer to a square"
            )

    @torch.no_grad()
    def set_style(self, style_image: torch.Tensor) -> None:
        """Compute the Gram targets of a (1, 3, H, W) style image in [0, 1] (kept as ``style_image``)."""
        self.style_image = style_image
        features = self.encoder(style_image.to(self.get_buffer("encoder.mean").device), self.style_layers)
        for name in self.style_layers:
            # Buffers follow the module across devices; not persistent: they derive from the style image.
            self.register_buffer(f"gram_{name}", gram_matrix(features[name]), persistent=False)
        self.has_style = True

    @torch.no_grad()
    def content_targets(self, content_image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.encoder(content_image, self.content_layers)

    def forward(self, output: torch.Tensor, content_targets: Mapping[str, torch.Tensor]) -> LossTerms:
        if not self.has_style:
            raise RuntimeError("call set_style(style_image) before computing the loss")
        features = self.encoder(output)
        content = sum(
            weight * F.mse_loss(features[name].float(), content_targets[name].float())
            for name, weight in self.content_layers.items()
        )
        style_layers = {}
        for name, weight in self.style_layers.items():
            gram = gram_matrix(features[name])
            target = self.get_buffer(f"gram_{name}")
            style_layers[name] = weight * F.mse_loss(gram, target.expand_as(gram))
        style = sum(style_layers.values())
        tv = total_variation(output)
        total = self.content_weight * content + self.style_weight * style + self.tv_weight * tv
        return LossTerms(total, content, style, tv, style_layers)
