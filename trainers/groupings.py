"""The groupings a run can divide its training data by, declared once: the table that validation
(`spec.py`), the division plan (`plan.py`) and the grouping service (`grouping.py`) all read.
Light (no torch, numpy or faiss), so a spec is checked without them.

To add a grouping: one entry in `GROUPINGS`, and the function that computes its partition,
registered in `grouping.py` under the entry's strategy (`@partitioner("<strategy>")`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Grouping:
    # what the grouping service runs in a round (a `grouping.PARTITIONERS` name); None: the run
    # never divides (the baseline)
    strategy: str | None
    # each cluster's learner trains its own block of the embedding (False: every learner trains
    # the whole embedding, and a learned mask per cluster makes no sense)
    splits_embedding: bool
    # the strategy clusters the training set's cluster-space vectors (an embedding pass per round)
    needs_vectors: bool
    # the strategy reads the dataset's ground-truth groups (a dataset without them is refused)
    needs_groups: bool = False
    # what `hierarchy: binary` runs instead of `strategy` (None: no binary hierarchy)
    binary_strategy: str | None = None

    @property
    def divides(self) -> bool:
        return self.strategy is not None


GROUPINGS: dict[str, Grouping] = {
    "none": Grouping(strategy=None, splits_embedding=False, needs_vectors=False),
    "kmeans": Grouping(strategy="kmeans", splits_embedding=True, needs_vectors=True, binary_strategy="binary"),
    "kmeans_nosplit": Grouping(strategy="kmeans", splits_embedding=False, needs_vectors=True),
    "random": Grouping(strategy="random", splits_embedding=True, needs_vectors=False),
    "gt_labels": Grouping(strategy="gt_labels", splits_embedding=True, needs_vectors=False, needs_groups=True),
}


def strategies() -> dict[str, Grouping]:
    """Every strategy the table names (flat and binary), with a grouping that runs it."""
    found: dict[str, Grouping] = {}
    for grouping in GROUPINGS.values():
        for strategy in (grouping.strategy, grouping.binary_strategy):
            if strategy is not None:
                found.setdefault(strategy, grouping)
    return found


def strategy_needs_vectors(strategy: str) -> bool:
    """The strategy clusters vectors (False for one the table does not name)."""
    grouping = strategies().get(strategy)
    return grouping is not None and grouping.needs_vectors


def names(predicate=lambda grouping: True) -> tuple[str, ...]:
    """The groupings for which `predicate(Grouping)` holds, in the table's order."""
    return tuple(name for name, grouping in GROUPINGS.items() if predicate(grouping))
