"""Backbones and the split embedding: K learners as slices of one embedding layer.

The embedding layer `f: R^m -> R^d` is stored as K linear maps of d/K outputs each (its row
blocks). A learner's embedding is its slice, L2-normalised on its own; the full embedding is the
concatenation. Storing the slices as separate parameters means a step that uses learner k leaves
the other slices' `.grad` at None, so Adam does not move them either (a zero gradient would still
let Adam's momentum move them). The parameter count does not depend on K.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .losses import build_loss
from .spec import RunSpec

# A learner's part of the embedding: slices [first, last) of the K slices. (k, k+1) is learner
# k of the flat split; (0, K) is the full embedding (baseline, conquer, kmeans_nosplit); the
# binary hierarchy uses the dyadic blocks in between.
Block = tuple[int, int]


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
    def __init__(self, depth: int, in_channels: int, pretrained: str | None):
        super().__init__()
        import torchvision

        net = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](weights=None)
        if pretrained is not None:
            state = torch.load(_weights_file(depth, pretrained), map_location="cpu", weights_only=True)
            missing, unexpected = net.load_state_dict(state, strict=False)
            if [k for k in missing if not k.startswith("fc.")] or unexpected:
                raise ValueError(f"{pretrained}: not a torchvision ResNet-{depth} state dict "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.in_channels = in_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            images = images.expand(-1, 3, -1, -1)  # grayscale glyphs through an RGB network
        return self.net(images)


def _weights_file(depth: int, pretrained: str) -> str:
    """A local weights file, or the torchvision file in the torch hub cache. Never downloads."""
    if pretrained != "cache":
        return os.path.expanduser(pretrained)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(glob.glob(str(cache / f"resnet{depth}-*.pth")))
    if not found:
        raise FileNotFoundError(
            f"pretrained: 'cache' found no ImageNet weights for ResNet-{depth} in {cache} "
            f"(expected resnet{depth}-<hash>.pth). dncml never downloads: copy torchvision's file there "
            f"(or set TORCH_HOME), or give pretrained: /path/to/weights.pth"
        )
    return found[-1]


def build_backbone(spec: RunSpec, in_channels: int) -> nn.Module:
    if spec.backbone == "glyphnet":
        if spec.pretrained is not None:
            raise ValueError("pretrained weights exist for the ResNet backbones only")
        return GlyphNet(in_channels)
    return ResNetBackbone(18 if spec.backbone == "resnet18" else 50, in_channels, spec.pretrained)


def block_key(block: Block) -> str:
    return f"{block[0]}-{block[1]}"


def learner_blocks(num_learners: int, hierarchy: str) -> list[Block]:
    """Every block some learner may use: the K slices and the full embedding (flat), plus the
    dyadic blocks of every level (binary)."""
    blocks = {(0, num_learners)} | {(k, k + 1) for k in range(num_learners)}
    if hierarchy == "binary":
        width = num_learners
        while width >= 1:
            blocks |= {(start, start + width) for start in range(0, num_learners, width)}
            width //= 2
    return sorted(blocks)


class DivideAndConquerNet(nn.Module):
    """Backbone + split embedding + one loss per learner, as one module.

    Keeping the losses inside the module lets DDP average their parameters' gradients (proxies,
    beta, masks) exactly like the backbone's, so they stay identical on every worker.
    """

    def __init__(self, spec: RunSpec, in_channels: int, num_classes: int):
        super().__init__()
        d, k = spec.embedding_dim, spec.num_learners
        self.num_learners = k
        self.backbone = build_backbone(spec, in_channels)
        self.learner_layers = nn.ModuleList(nn.Linear(self.backbone.feature_dim, d // k) for _ in range(k))
        self.learned_masks = spec.masks == "learned" and spec.divides
        self.mask_regularization = spec.mask_regularization
        if self.learned_masks:
            # TPAMI soft masks over the full embedding, starting from the CVPR hard slices.
            init = torch.full((k, d), 0.1)
            for learner in range(k):
                init[learner, learner * (d // k):(learner + 1) * (d // k)] = 1.0
            self.masks = nn.Parameter(init)
        self.cluster_space = spec.cluster_space
        self.freeze_bn = spec.freeze_bn
        if self.freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    for parameter in module.parameters():
                        parameter.requires_grad_(False)
        self.losses = nn.ModuleDict()
        for block in learner_blocks(k, spec.hierarchy):
            masked = self.learned_masks and block[1] - block[0] == 1
            width = d if masked else d * (block[1] - block[0]) // k
            self.losses[block_key(block)] = build_loss(
                spec.loss, width, num_classes, margin=spec.margin, margin_beta=spec.margin_beta,
                learn_beta=spec.learn_beta, beta_per_class=spec.beta_per_class)

    # -- parameters, for the optimiser's groups --------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        embedding = list(self.learner_layers.parameters()) + ([self.masks] if self.learned_masks else [])
        return {
            "backbone": [p for p in self.backbone.parameters() if p.requires_grad],
            "embedding": embedding,
            "loss": list(self.losses.parameters()),
        }

    def train(self, mode: bool = True) -> "DivideAndConquerNet":
        super().train(mode)
        if self.freeze_bn:  # the authors keep the backbone's BatchNorm statistics frozen
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    # -- embeddings ------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def raw_embedding(self, features: torch.Tensor, block: Block) -> torch.Tensor:
        return torch.cat([self.learner_layers[k](features) for k in range(*block)], dim=1)

    def learner_embedding(self, features: torch.Tensor, block: Block) -> torch.Tensor:
        """The L2-normalised embedding a learner trains: its slices, or its soft mask."""
        if self.learned_masks and block[1] - block[0] == 1:
            full = self.raw_embedding(features, (0, self.num_learners))
            return F.normalize(F.relu(self.masks[block[0]]) * full, dim=1)
        return F.normalize(self.raw_embedding(features, block), dim=1)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, space: str = "embedding") -> torch.Tensor:
        """Test-time embedding (full, normalised) or normalised backbone features."""
        features = self.features(images)
        if space == "backbone":
            return F.normalize(features, dim=1)
        return self.learner_embedding(features, (0, self.num_learners))

    def mask_overlap(self) -> torch.Tensor:
        """TPAMI regulariser: mean pairwise cosine similarity of the (ReLU'd) masks."""
        masks = F.normalize(F.relu(self.masks), dim=1)
        similarity = masks @ masks.t()
        k = self.num_learners
        return (similarity.sum() - similarity.diagonal().sum()) / max(1, k * (k - 1))

    # -- one training step's forward -----------------------------------------------------------
    def forward(self, images: torch.Tensor, labels: torch.Tensor, block: Block) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of the learner owning `block` on this batch, and the batch's cluster-space
        vectors (detached), which `embedding_source: training_pass` collects for free."""
        features = self.features(images)
        loss = self.losses[block_key(block)](self.learner_embedding(features, block), labels)
        if self.learned_masks and block[1] - block[0] == 1:
            loss = loss + self.mask_regularization * self.mask_overlap()
        with torch.no_grad():
            detached = features.detach()
            if self.cluster_space == "backbone":
                vectors = F.normalize(detached, dim=1)
            else:
                vectors = F.normalize(self.raw_embedding(detached, (0, self.num_learners)), dim=1)
        return loss, vectors
