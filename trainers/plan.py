"""The division plan: the one place that says how a run divides the embedding and the data over
time.

Which phase an epoch is in, when the data is re-clustered, how many clusters a round has, when
the binary hierarchy (TPAMI) splits and which learner then starts from its parent's mask, which
block of the embedding each cluster's learner trains, which blocks exist at all, and when the
backbone rests. The trainer, the model and the grouping request all ask the plan; none of them
re-derives it.

The embedding is stored as K unit slices of d/K dimensions. A *block* `(first, last)` is the
slices [first, last): `(k, k + 1)` is learner k of the flat split, `(0, K)` the full embedding
(baseline, warm-up, conquer, kmeans_nosplit, the full-embedding phase), and the binary hierarchy
uses the dyadic blocks in between (K' clusters of K / K' slices each).
"""

from __future__ import annotations

from dataclasses import dataclass

from .groupings import GROUPINGS, Grouping

Block = tuple[int, int]


@dataclass(frozen=True)
class DivisionPlan:
    num_learners: int  # K: unit slices of the embedding (the final number of learners)
    grouping: str  # a name of `groupings.GROUPINGS`
    hierarchy: str  # flat | binary
    recluster_every: int  # T, epochs
    warmup_epochs: int
    epochs: int  # divide epochs
    finetune_epochs: int  # conquer epochs
    full_embedding_from: int | None = None  # epoch from which the loss uses the full embedding
    freeze_backbone_epochs: int = 0  # epochs the backbone rests from each re-clustering on

    # -- what kind of run --------------------------------------------------------------------
    @property
    def declared(self) -> Grouping:
        """The grouping's entry in the table (`groupings.GROUPINGS`)."""
        return GROUPINGS[self.grouping]

    @property
    def divides(self) -> bool:
        """False for the baseline: one learner, all data, the whole embedding."""
        return self.declared.divides

    @property
    def splits_embedding(self) -> bool:
        """Each cluster trains its own block (False for the baseline and kmeans_nosplit)."""
        return self.divides and self.declared.splits_embedding

    @property
    def splits_clusters(self) -> bool:
        """The binary hierarchy (TPAMI): each round splits the last round's clusters in two."""
        return self.hierarchy == "binary" and self.declared.binary_strategy is not None

    @property
    def strategy(self) -> str:
        """What the grouping service runs in a round ("none" for the baseline)."""
        if self.splits_clusters:
            return self.declared.binary_strategy
        return self.declared.strategy or "none"

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.epochs + self.finetune_epochs

    # -- time --------------------------------------------------------------------------------
    def phase(self, epoch: int) -> str:
        """warmup | divide | conquer, or baseline for a run that never divides."""
        if epoch < self.warmup_epochs:
            return "warmup"
        if not self.divides:
            return "baseline"
        return "divide" if epoch < self.warmup_epochs + self.epochs else "conquer"

    def reclusters_at(self, epoch: int) -> bool:
        return self.phase(epoch) == "divide" and (epoch - self.warmup_epochs) % self.recluster_every == 0

    def round_of(self, epoch: int) -> int:
        """The division round an epoch of the divide phase belongs to (0, 1, ...)."""
        return (epoch - self.warmup_epochs) // self.recluster_every

    def clusters_in_round(self, round_index: int) -> int:
        """K for a flat run; 1, 2, 4, ... up to K for the binary hierarchy."""
        if self.hierarchy == "binary":
            return min(2**round_index, self.num_learners)
        return self.num_learners

    def splits_at_round(self, round_index: int) -> bool:
        """True where the binary hierarchy splits every cluster of the last round in two."""
        return (
            self.splits_clusters and round_index > 0 and self.clusters_in_round(round_index) == 2 * self.clusters_in_round(round_index - 1)
        )

    def splits_at(self, epoch: int) -> bool:
        """The division round that starts at `epoch` splits every cluster in two."""
        return self.reclusters_at(epoch) and self.splits_at_round(self.round_of(epoch))

    def undivided_at(self, epoch: int) -> bool:
        """Before the first division (the warm-up of a dividing run): every row of a table
        trains and evaluates the same undivided model, the whole embedding normalised as a
        whole, so that the rows of a seed are identical until they divide."""
        return self.phase(epoch) == "warmup"

    def backbone_rests(self, epoch: int) -> bool:
        """TPAMI: the backbone does not move for `freeze_backbone_epochs` epochs from each
        re-clustering on (the embedding and the losses still train)."""
        if not self.freeze_backbone_epochs or self.phase(epoch) != "divide":
            return False
        return (epoch - self.warmup_epochs) % self.recluster_every < self.freeze_backbone_epochs

    def full_embedding_at(self, epoch: int) -> bool:
        """The loss uses the full embedding: outside the divide phase, when the embedding is not
        split, and from `full_embedding_from` on (batches still come from the clusters)."""
        if self.phase(epoch) != "divide" or not self.splits_embedding:
            return True
        return self.full_embedding_from is not None and epoch >= self.full_embedding_from

    # -- blocks ------------------------------------------------------------------------------
    def block_of(self, cluster: int, num_clusters: int, epoch: int) -> Block:
        """The block of the embedding that `cluster`'s learner trains at `epoch`."""
        if self.full_embedding_at(epoch):
            return (0, self.num_learners)
        width = self.num_learners // num_clusters
        return (cluster * width, (cluster + 1) * width)

    def mask_copies(self, epoch: int) -> list[tuple[int, int]]:
        """The hierarchy's sibling rule, as (to, from) learner slices: when the binary hierarchy
        has just split at `epoch`, the cluster 2c + 1 (the second child of parent c, block
        (first, last)) starts from its parent's learned mask, held by the first child's first
        slice (first - width). Nothing outside a split, nor in a full-embedding epoch."""
        if not self.splits_at(epoch) or self.full_embedding_at(epoch):
            return []
        num_clusters = self.clusters_in_round(self.round_of(epoch))
        width = self.num_learners // num_clusters
        return [(cluster * width, (cluster - 1) * width) for cluster in range(1, num_clusters, 2)]

    def blocks(self) -> list[Block]:
        """Every block some learner may train: the full embedding and the K slices (flat), plus
        the dyadic blocks of every level (binary)."""
        k = self.num_learners
        found = {(0, k)} | {(unit, unit + 1) for unit in range(k)}
        if self.hierarchy == "binary":
            width = k
            while width >= 1:
                found |= {(start, start + width) for start in range(0, k, width)}
                width //= 2
        return sorted(found)


def block_key(block: Block) -> str:
    return f"{block[0]}-{block[1]}"
