"""The split embedding: K learners as slices of one embedding layer, on a backbone
(`backbones.py`).

The embedding layer `f: R^m -> R^d` is initialised once, as one d-dim layer drawn from the run's
seed, whatever K and the grouping: a seed means the same initial weights in every row of a
table. It is stored as K linear maps of d/K outputs each (its row blocks, copied from that one
init). A learner's embedding is its slice, L2-normalised on its own; the full embedding is the
concatenation. Storing the slices as separate parameters means a step that uses learner k leaves
the other slices' `.grad` at None, so Adam does not move them either (a zero gradient would still
let Adam's momentum move them). The parameter count does not depend on K.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .losses import build_loss
from .plan import Block, block_key
from .spec import RunSpec


def initial_embedding(feature_dim: int, d: int, k: int, init: str = "default") -> tuple[torch.Tensor, torch.Tensor]:
    """The embedding layer's initial (weight, bias): one `nn.Linear(feature_dim, d)` drawn from
    the global RNG (which the trainer seeds with the run's seed): the same draws for every K.
    `xavier_normal` (the authors' `init_splitted`): each slice's rows are Xavier-normal for the
    slice's shape, from one standard-normal draw of all d rows (so the weights for different K
    differ only by each slice's scale); the bias stays torch's."""
    layer = nn.Linear(feature_dim, d)
    weight, bias = layer.weight.detach(), layer.bias.detach()
    if init == "xavier_normal":
        std = math.sqrt(2.0 / (feature_dim + d // k))  # xavier_normal_(gain=1) of a (d/K, m) slice
        weight = torch.randn(d, feature_dim) * std
    return weight, bias


def _linear_from(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """A linear layer holding a copy of the given rows (no init of its own: no RNG draws)."""
    layer = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


class DivideAndConquerNet(nn.Module):
    """Backbone + split embedding + one loss per learner block, as one module.

    The embedding layer is K unit slices (`learner_layers`). With fixed slices (CVPR), each
    slice is L2-normalised on its own, always, as in the authors' `forward`: a learner trains its
    normalised slice; a block of several slices (the full embedding in warm-up and conquer, a
    parent block of the binary hierarchy) is the concatenation of its normalised slices,
    re-normalised for the loss; and the test-time embedding is the concatenation of all K
    normalised slices (`embedding_form` "slices"). A run whose embedding is not split (the
    baseline, kmeans_nosplit) is one learner over the whole d-dim vector, normalised as a whole
    ("whole"). Learned masks (TPAMI) weight the whole raw embedding per learner, ReLU(mask_k) *
    e, normalised as a whole; they are off at test time.

    Keeping the losses inside the module lets DDP average their parameters' gradients (proxies,
    beta, masks) exactly like the backbone's, so they stay identical on every worker.
    """

    def __init__(self, spec: RunSpec, in_channels: int, num_classes: int, backbone_weights: str | os.PathLike | None = None):
        """`backbone_weights`: the file the backbone starts from, as `pretrain.resolve_weights(spec)`
        names it; None starts it from scratch (or from a checkpoint loaded over it)."""
        super().__init__()
        d, k = spec.embedding_dim, spec.num_learners
        self.num_learners = k
        self.form = spec.embedding_form
        self.backbone = build_backbone(spec.backbone, in_channels, backbone_weights)
        weight, bias = initial_embedding(self.backbone.feature_dim, d, k, spec.setting("embedding_init"))
        # `one` (authors_code): the layer is one parameter, its rows the learners' slices: a step
        # on learner k gives the other rows a zero gradient, and Adam's momentum still moves them.
        self.shared_embedding = spec.setting("embedding_parameter") == "one"
        if self.shared_embedding:
            self.embedding = _linear_from(weight, bias)
        else:
            self.learner_layers = nn.ModuleList(_linear_from(weight[i : i + d // k], bias[i : i + d // k]) for i in range(0, d, d // k))
        dropout = spec.setting("embedding_dropout")
        self.dropout = nn.Dropout(dropout) if dropout else None  # authors_code: 0.01 before the embedding
        # Before the first division every row of a table trains (and is evaluated as) the
        # undivided model: the whole d-dim embedding, normalised as a whole. The trainer sets it
        # per epoch (`DivisionPlan.undivided_at`).
        self.undivided = False
        self.learned_masks = spec.masks == "learned" and spec.plan.splits_embedding
        self.mask_regularization = spec.mask_regularization
        if self.learned_masks:
            # TPAMI: one mask over the whole embedding per learner, started at ones (the authors'
            # `masking_init`); a block (first, last) uses the mask of its first slice.
            self.masks = nn.ParameterList(nn.Parameter(torch.ones(d)) for _ in range(k))
            self.active_masks: list[int] = list(range(k))
        self.cluster_space = spec.setting("cluster_space")
        self.freeze_bn = spec.resolved_freeze_bn
        if self.freeze_bn == "all":
            for module in self._batch_norms():
                for parameter in module.parameters():
                    parameter.requires_grad_(False)
        plan = spec.plan
        self.losses = nn.ModuleDict()
        for block in plan.blocks():
            width = d if self._masked(block) else d * (block[1] - block[0]) // k
            self.losses[block_key(block)] = build_loss(
                spec.loss,
                width,
                num_classes,
                margin=spec.margin,
                margin_beta=spec.margin_beta,
                learn_beta=spec.setting("learn_beta"),
                negatives=spec.setting("negatives"),
                beta_per_class=spec.beta_per_class,
            )

    def _batch_norms(self):
        return [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _masked(self, block: Block) -> bool:
        """A learner's own block under learned masks (never the full embedding)."""
        return self.learned_masks and block != (0, self.num_learners)

    # -- parameters, for the optimiser's groups --------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "backbone": [p for p in self.backbone.parameters() if p.requires_grad],
            "embedding": list((self.embedding if self.shared_embedding else self.learner_layers).parameters()),
            "masks": list(self.masks) if self.learned_masks else [],
            "loss": list(self.losses.parameters()),
        }

    def train(self, mode: bool = True) -> DivideAndConquerNet:
        super().train(mode)
        if self.freeze_bn in ("stats", "all"):  # the authors keep the running statistics frozen
            for module in self._batch_norms():
                module.eval()
        return self

    # -- the TPAMI hierarchy with learned masks ----------------------------------------------------
    @torch.no_grad()
    def set_learner_blocks(self, blocks: list[Block], mask_copies: Sequence[tuple[int, int]] = ()) -> list[nn.Parameter]:
        """The blocks this round's learners train, and the masks to copy as (to, from) learner
        slices (`DivisionPlan.mask_copies`: when the binary hierarchy has just split, a second
        child starts from its parent's mask). Returns the masks that were overwritten (their
        optimiser state must be reset, as the authors re-create the masks' optimiser group)."""
        if not self.learned_masks:
            return []
        starts = sorted({first for first, last in blocks if (first, last) != (0, self.num_learners)})
        copied = []
        for target, source in mask_copies:
            self.masks[target].copy_(self.masks[source])
            copied.append(self.masks[target])
        self.active_masks = starts or list(range(self.num_learners))
        return copied

    # -- embeddings ------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def raw_embedding(self, features: torch.Tensor) -> torch.Tensor:
        """The whole d-dim output, as one product with the stacked slices (the same arithmetic for
        every K, so an undivided model computes the same numbers whatever its K)."""
        if self.shared_embedding:
            return self.embedding(features)
        layers = self.learner_layers
        if len(layers) == 1:
            return layers[0](features)
        return F.linear(features, torch.cat([layer.weight for layer in layers]), torch.cat([layer.bias for layer in layers]))

    def _slices(self, features: torch.Tensor, block: Block) -> torch.Tensor:
        """The block's slices, each L2-normalised on its own, concatenated (norm sqrt(width))."""
        if self.shared_embedding:
            width = self.embedding.out_features // self.num_learners
            rows = slice(block[0] * width, block[1] * width)
            out = F.linear(features, self.embedding.weight[rows], self.embedding.bias[rows])
            return F.normalize(out.view(len(out), block[1] - block[0], width), dim=2).flatten(1)
        return torch.cat([F.normalize(self.learner_layers[k](features), dim=1) for k in range(*block)], dim=1)

    def learner_embedding(self, features: torch.Tensor, block: Block) -> torch.Tensor:
        """The unit-norm embedding the learner owning `block` trains."""
        if self._masked(block):
            return F.normalize(F.relu(self.masks[block[0]]) * self.raw_embedding(features), dim=1)
        if self.form == "slices" and not self.undivided:
            return F.normalize(self._slices(features, block), dim=1)
        return F.normalize(self.raw_embedding(features), dim=1)

    def full_embedding(self, features: torch.Tensor) -> torch.Tensor:
        """The test-time embedding (see the class docstring for its form)."""
        if self.form == "slices" and not self.undivided:
            return self._slices(features, (0, self.num_learners))
        return F.normalize(self.raw_embedding(features), dim=1)

    def cluster_vectors(self, features: torch.Tensor) -> torch.Tensor:
        """What a division round clusters: normalised backbone features (the authors' code) or
        the test-time embedding, normalised."""
        if self.cluster_space == "backbone":
            return F.normalize(features, dim=1)
        return F.normalize(self.full_embedding(features), dim=1)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, space: str = "embedding") -> torch.Tensor:
        """Test-time embedding, or the normalised backbone features (`space="backbone"`)."""
        features = self.features(images)
        return F.normalize(features, dim=1) if space == "backbone" else self.full_embedding(features)

    def mask_overlap(self) -> torch.Tensor:
        """TPAMI regulariser: mean pairwise cosine similarity of the active learners' ReLU'd masks."""
        active = self.active_masks
        if len(active) < 2:
            return torch.zeros((), device=self.masks[0].device)
        masks = F.normalize(F.relu(torch.stack([self.masks[i] for i in active])), dim=1)
        similarity = masks @ masks.t()
        k = len(active)
        return (similarity.sum() - similarity.diagonal().sum()) / (k * (k - 1))

    # -- one training step's forward -----------------------------------------------------------
    def forward(self, images: torch.Tensor, labels: torch.Tensor, block: Block) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of the learner owning `block` on this batch, and the batch's cluster-space
        vectors (detached), which `embedding_source: training_pass` collects for free."""
        features = self.features(images)
        trained = features if self.dropout is None else self.dropout(features)
        loss = self.losses[block_key(block)](self.learner_embedding(trained, block), labels)
        if self._masked(block):
            loss = loss + self.mask_regularization * self.mask_overlap()
        with torch.no_grad():
            vectors = self.cluster_vectors(features.detach())
        return loss, vectors
