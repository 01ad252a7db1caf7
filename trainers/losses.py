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
    negatives: str = "distance_weighted",
) -> LearnerLoss:
    """The paper's loss families. Labels passed at train time must be 0..num_classes-1."""
    return LOSSES.create(
        name,
        embedding_size,
        num_classes,
        margin=margin,
        margin_beta=margin_beta,
        learn_beta=learn_beta,
        beta_per_class=beta_per_class,
        negatives=negatives,
    )


class NearestNegativesMiner(miners.BaseMiner):
    """The authors' sampler (`lib/loss/sampler.py` of their code): every (anchor, positive) pair
    of the batch, each paired with one of the anchor's nearest negatives at distance >= `cutoff`
    (as many negatives as the anchor has positives: m - 1 in a full class). Where an anchor has
    too few negatives that far, the nearer ones make up the number; never one of its class."""

    def __init__(self, cutoff: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.cutoff = cutoff

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        distances = self.distance(embeddings, ref_emb)
        same = labels[:, None] == ref_labels[None, :]
        positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        # rank the candidates: negatives at >= cutoff by distance, then the nearer ones, then the class
        key = distances + 1e6 * (distances < self.cutoff) + 2e6 * same
        nearest = key.argsort(dim=1)
        anchors, positives = positive.nonzero(as_tuple=True)
        rank = positive.cumsum(dim=1)[anchors, positives] - 1  # j for the anchor's j-th positive
        return anchors, positives, nearest[anchors, rank]


@LOSSES.register("margin")
def margin_loss(embedding_size, num_classes, *, margin, margin_beta, learn_beta, beta_per_class, negatives) -> LearnerLoss:
    # Wu et al.: distance-weighted sampling, learnable (optionally class-specific) beta (paper);
    # the authors' code: beta fixed, the nearest negatives at distance >= 0.5 (authors_code).
    miner = (
        NearestNegativesMiner(cutoff=0.5) if negatives == "nearest" else miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    )
    return LearnerLoss(
        losses.MarginLoss(
            margin=margin, nu=0.0, beta=margin_beta, learn_beta=learn_beta, num_classes=num_classes if beta_per_class else None
        ),
        miner,
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
