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
from torch import nn

from .registry import BACKBONES


class GlyphNet(nn.Module):
    """Three conv-BN-ReLU-pool blocks (32/64/128 channels): ~100k parameters, CPU-friendly."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((in_channels, 32), (32, 64), (64, 128)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = 128

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


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
