"""Backbones: architectures apart from their weights (as timm's `create_model`).

A builder takes the number of input channels and a weights file (or None: the architecture's
own initialisation) and never looks for, downloads or trains weights: which file `pretrained:`
names (a local path, torchvision's ImageNet file, the pre-trained GlyphNet, trained on demand)
is decided by `pretrain.resolve_weights`, which the caller runs first. Every file is loaded with
`torch.load(weights_only=True)`: tensors only, loading runs no code.

To add a backbone: declare its name in `registry.py` (`BACKBONES.declare`, with the named
weights it takes and its smallest image size), and register its builder here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .registry import BACKBONES


class GlyphNet(nn.Module):
    """Three conv-BN-ReLU-pool blocks (32/64/128 channels): ~100k parameters, CPU-friendly.

    The forward pass computes the same function as `body` (the layers, kept for the state dict's
    names) in fewer passes over the activations, which on a CPU cost about as much as the
    convolutions themselves:
    * a BatchNorm in eval mode (frozen statistics: `freeze_bn` stats or all) is an affine map per
      channel, folded into its convolution's weight and bias; autograd trains the convolution (and
      BN's affine weights, where they train) through the fold;
    * ReLU after the max-pool instead of before (they commute: ReLU is monotone), on a quarter of
      the values;
    * each block's output in the layout of the weights: the first convolution's output (1 input
      channel, where NCHW and NHWC strides coincide) comes back NCHW, which would put every later
      layer in NCHW.
    Together: a training step of the quick run 1.43x faster on one core, evaluation 1.24x
    (`bench_trainer.py --only step`, which times both forms side by side; README).
    """

    def __init__(self, in_channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((in_channels, 32), (32, 64), (64, 128)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = 128

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last if _is_channels_last(self.body[4].weight) else torch.contiguous_format
        x = images
        for conv, norm in zip(self.body[0:12:4], self.body[1:12:4]):  # the three (conv, BN) pairs
            x = norm(conv(x)) if norm.training else _conv_frozen_norm(conv, norm, x)
            x = F.relu(F.max_pool2d(x.contiguous(memory_format=layout), 2))
        return x.mean((2, 3))


def _conv_frozen_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """conv then an eval-mode BatchNorm, as one convolution: y = (W s) * x + (beta - mu s) with
    s = gamma / sqrt(var + eps), per output channel."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    shift = -norm.running_mean * scale
    if norm.affine:
        scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
    bias = shift if conv.bias is None else shift + conv.bias * scale
    return F.conv2d(x, conv.weight * scale.view(-1, 1, 1, 1), bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _is_channels_last(weight: torch.Tensor) -> bool:
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


class ResNetBackbone(nn.Module):
    def __init__(self, depth: int, in_channels: int, weights: str | os.PathLike | None = None):
        super().__init__()
        import torchvision

        net = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](weights=None)
        if weights is not None:
            missing, unexpected = net.load_state_dict(load_weights(weights), strict=False)
            if [k for k in missing if not k.startswith("fc.")] or unexpected:
                raise ValueError(
                    f"{weights}: not a torchvision ResNet-{depth} state dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.in_channels = in_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            images = images.expand(-1, 3, -1, -1)  # grayscale glyphs through an RGB network
        return self.net(images)


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a file: tensors only (`weights_only=True`), so loading runs no code."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def build_backbone(name: str, in_channels: int, weights: str | os.PathLike | None = None) -> nn.Module:
    """The backbone `name`, initialised from the file `weights` (None: from scratch)."""
    return BACKBONES.create(name, in_channels, weights)


@BACKBONES.register("glyphnet")
def glyphnet(in_channels: int, weights: str | os.PathLike | None = None) -> GlyphNet:
    net = GlyphNet(in_channels)
    if weights is not None:
        try:
            net.load_state_dict(load_weights(weights))
        except RuntimeError as error:
            raise ValueError(f"{weights}: not a GlyphNet state dict for {in_channels} input channel(s) ({error})") from None
    return net


@BACKBONES.register("resnet18")
def resnet18(in_channels: int, weights: str | os.PathLike | None = None) -> ResNetBackbone:
    return ResNetBackbone(18, in_channels, weights)


@BACKBONES.register("resnet50")
def resnet50(in_channels: int, weights: str | os.PathLike | None = None) -> ResNetBackbone:
    return ResNetBackbone(50, in_channels, weights)
