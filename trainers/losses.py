"""Losses and miners from pytorch-metric-learning, one instance per learner.

Each learner owns its loss instance (its own proxies for Proxy-NCA, its own beta for Margin),
sized for that learner's embedding width; the instances live inside the trained module so that
their parameters are optimised and, under DDP, averaged like the model's.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning import losses, miners

from .registry import LOSSES


class LearnerLoss(torch.nn.Module):
    """A pytorch-metric-learning loss with its miner (if the loss family uses one)."""

    def __init__(self, loss: torch.nn.Module, miner: torch.nn.Module | None = None):
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Miners and losses compute pairwise distances: do it in float32 even under autocast.
        embeddings = embeddings.float()
        if not torch.isfinite(embeddings).all():
            # A diverged model: the miners cannot rank NaN distances (they fail with unrelated
            # errors). Hand the trainer a non-finite loss, which it reports with where it happened.
            return embeddings.sum() * float("nan")
        indices = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, indices)


def build_loss(
    name: str,
    embedding_size: int,
    num_classes: int,
    *,
    margin: float = 0.2,
    margin_beta: float = 1.2,
    learn_beta: bool = True,
    beta_per_class: bool = False,
) -> LearnerLoss:
    """The paper's loss families. Labels passed at train time must be 0..num_classes-1."""
    return LOSSES.create(
        name, embedding_size, num_classes, margin=margin, margin_beta=margin_beta, learn_beta=learn_beta, beta_per_class=beta_per_class
    )


@LOSSES.register("margin")
def margin_loss(embedding_size, num_classes, *, margin, margin_beta, learn_beta, beta_per_class) -> LearnerLoss:
    # Wu et al.: distance-weighted sampling, learnable (optionally class-specific) beta.
    return LearnerLoss(
        losses.MarginLoss(
            margin=margin, nu=0.0, beta=margin_beta, learn_beta=learn_beta, num_classes=num_classes if beta_per_class else None
        ),
        miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4),
    )


@LOSSES.register("triplet")
def triplet_loss(embedding_size, num_classes, *, margin, **_) -> LearnerLoss:
    return LearnerLoss(losses.TripletMarginLoss(margin=margin), miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard"))


@LOSSES.register("contrastive")
def contrastive_loss(embedding_size, num_classes, **_) -> LearnerLoss:
    return LearnerLoss(losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0), miners.PairMarginMiner(pos_margin=0.0, neg_margin=1.0))


@LOSSES.register("multisimilarity")
def multisimilarity_loss(embedding_size, num_classes, **_) -> LearnerLoss:
    return LearnerLoss(losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1))


@LOSSES.register("proxynca")
def proxynca_loss(embedding_size, num_classes, **_) -> LearnerLoss:
    return LearnerLoss(losses.ProxyNCALoss(num_classes=num_classes, embedding_size=embedding_size))


@LOSSES.register("normsoftmax")
def normsoftmax_loss(embedding_size, num_classes, **_) -> LearnerLoss:
    return LearnerLoss(losses.NormalizedSoftmaxLoss(num_classes=num_classes, embedding_size=embedding_size))


@LOSSES.register("arcface")
def arcface_loss(embedding_size, num_classes, **_) -> LearnerLoss:
    return LearnerLoss(losses.ArcFaceLoss(num_classes=num_classes, embedding_size=embedding_size))
