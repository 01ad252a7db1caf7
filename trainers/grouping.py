"""The division step: which training samples each learner gets.

Pure functions of (vectors, labels, previous assignment): k-means (Faiss, whole training set),
the binary hierarchy (TPAMI), random and ground-truth-label partitions, Hungarian matching so
learner k keeps "its" data across rounds, and the repair of clusters too small to form batches.
Every strategy of the grouping table (`groupings.py`) has its partition function here,
registered with `@partitioner`; `compute_assignment` dispatches on the request's strategy.
`LocalGroupingService` is the single-process grouping service of the trainer's seam; on Ray the
clustering actor in `dncml.platform` calls the same `compute_assignment`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from . import groupings
from .faiss_ops import kmeans


@dataclass
class PartitionRequest:
    """What one worker sends for one round: its shard of vectors and what the round needs.

    `vectors[i]` is the cluster-space vector of training sample `indices[i]`; strategies that do
    not look at the data (random, gt_labels) send none.
    """

    round: int
    strategy: str
    num_clusters: int
    seed: int
    labels: np.ndarray  # (n,) class of every training sample
    groups: np.ndarray  # (n,) ground-truth group of every training sample
    previous: np.ndarray | None = None  # (n,) last round's clusters
    previous_num_clusters: int = 0  # how many clusters the last round had (some may be empty)
    splits: bool = False  # binary hierarchy: split each of the last round's clusters in two
    indices: np.ndarray | None = None
    vectors: np.ndarray | None = None
    rank: int = 0
    world_size: int = 1
    kmeans_iterations: int = 100
    kmeans_sample: int | None = None  # train the centroids on a sample of this many points (None: all)
    move_strays: bool = True  # a class's stray samples join its main cluster (False: left out for the round)

    def __post_init__(self) -> None:
        if self.previous is not None and self.previous_num_clusters < 1:
            # Inferring it from previous.max() + 1 would be wrong whenever the last cluster was
            # empty, and the Hungarian matching would then be skipped without a word.
            raise ValueError("PartitionRequest: give previous_num_clusters with previous")

    @property
    def needs_vectors(self) -> bool:
        return groupings.strategy_needs_vectors(self.strategy) and self.num_clusters > 1


@dataclass
class Assignment:
    """A versioned partition of the training set: `clusters[i]` is the learner of sample i."""

    version: int
    clusters: np.ndarray
    num_clusters: int
    strategy: str = ""
    cost: float = float("nan")  # k-means objective where there is one
    seconds: float = 0.0
    repaired: int = 0  # samples moved by the repair
    changed: float = float("nan")  # fraction of samples whose learner changed since last round
    stats: dict = field(default_factory=dict)

    def sizes(self) -> list[int]:
        return np.bincount(self.clusters, minlength=self.num_clusters).tolist()

    def classes_per_cluster(self, labels: np.ndarray) -> list[int]:
        return [int(len(np.unique(labels[self.clusters == c]))) for c in range(self.num_clusters)]

    def evidence(self, labels: np.ndarray, groups: np.ndarray | None = None) -> dict:
        """What this division does to the data, for comparing groupings: the classes in each
        cluster, the class purity (the share of a class's images in its largest cluster, averaged
        over classes: 1 when classes stay whole, about 1/K for a random partition of images) and
        the group purity (the share of the images in each cluster from its most common group of
        the dataset, e.g. a glyph's script; NaN without groups)."""
        labels = np.asarray(labels)
        _, label_ids = np.unique(labels, return_inverse=True)
        per_class = np.zeros((label_ids.max() + 1, self.num_clusters), dtype=np.int64)
        np.add.at(per_class, (label_ids, self.clusters), 1)
        class_purity = float((per_class.max(axis=1) / per_class.sum(axis=1)).mean())
        group_purity = float("nan")
        if groups is not None and (np.asarray(groups) >= 0).any():
            _, group_ids = np.unique(np.asarray(groups), return_inverse=True)
            per_cluster = np.zeros((self.num_clusters, group_ids.max() + 1), dtype=np.int64)
            np.add.at(per_cluster, (self.clusters, group_ids), 1)
            group_purity = float(per_cluster.max(axis=1).sum() / len(self.clusters))
        return {"cluster_classes": json.dumps(self.classes_per_cluster(labels)), "class_purity": class_purity, "group_purity": group_purity}


# ---------------------------------------------------------------------------------------------
def gather_vectors(num_samples: int, shards: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Assemble (indices, vectors) shards from all workers into one (n, dim) array."""
    dim = shards[0][1].shape[1]
    vectors = np.zeros((num_samples, dim), dtype=np.float32)
    seen = np.zeros(num_samples, dtype=bool)
    for indices, shard in shards:
        vectors[indices] = shard
        seen[indices] = True
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise ValueError(f"clustering round is missing the vectors of {len(missing)} training samples (e.g. {missing[:5].tolist()})")
    return vectors


def match_to_previous(clusters: np.ndarray, previous: np.ndarray, num_clusters: int) -> np.ndarray:
    """Relabel new clusters so that each keeps the learner of the old cluster it overlaps most
    (Hungarian method on the membership-overlap matrix)."""
    overlap = np.zeros((num_clusters, num_clusters), dtype=np.int64)
    np.add.at(overlap, (clusters, previous), 1)
    new_ids, old_ids = linear_sum_assignment(-overlap)
    relabel = np.empty(num_clusters, dtype=np.int64)
    relabel[new_ids] = old_ids
    return relabel[clusters]


def repair(
    clusters: np.ndarray, labels: np.ndarray, num_clusters: int, min_classes: int = 2, min_per_class: int = 2, move_strays: bool = True
) -> tuple[np.ndarray, int]:
    """Make every cluster able to form batches: >= `min_classes` classes with >= `min_per_class`
    samples each. Stray samples (their class has fewer than `min_per_class` in that cluster) join
    their class's main cluster (unless `move_strays` is False, the authors' code: they stay, and
    the sampler leaves them out until the next round); a cluster still short of classes takes
    whole classes from the cluster that has the most. Returns (clusters, number of samples moved)."""
    clusters = clusters.copy()
    original = clusters.copy()
    class_ids, class_of = np.unique(labels, return_inverse=True)
    num_classes = len(class_ids)

    def pair_counts() -> np.ndarray:
        return np.bincount(clusters * num_classes + class_of, minlength=num_clusters * num_classes).reshape(num_clusters, num_classes)

    counts = pair_counts()
    home = counts.argmax(axis=0)  # the cluster holding most of each class
    if move_strays:
        stray = counts[clusters, class_of] < min_per_class
        clusters[stray] = home[class_of[stray]]

    counts = pair_counts()
    for _ in range(num_clusters * num_classes):
        valid = counts >= min_per_class
        per_cluster = valid.sum(axis=1)
        short = np.flatnonzero(per_cluster < min_classes)
        if len(short) == 0:
            break
        target = short[0]
        donor = int(per_cluster.argmax())
        if per_cluster[donor] <= min_classes:
            break  # nothing left to give: fewer usable classes than 2 K (the spec check prevents it)
        donor_classes = np.flatnonzero(valid[donor])
        give = donor_classes[counts[donor, donor_classes].argmin()]  # the donor's smallest class
        clusters[(clusters == donor) & (class_of == give)] = target
        counts = pair_counts()
    return clusters, int((clusters != original).sum())


def ground_truth_partition(labels: np.ndarray, groups: np.ndarray, num_clusters: int) -> np.ndarray:
    """Whole ground-truth groups (glyph scripts, SOP super-classes) packed into K clusters of
    balanced size (largest first into the smallest cluster); groups are split by class when there
    are fewer groups than clusters."""
    units: list[np.ndarray] = []  # each unit: the classes it holds
    for group in np.unique(groups):
        units.append(np.unique(labels[groups == group]))
    class_size = {c: int(n) for c, n in zip(*np.unique(labels, return_counts=True))}

    def unit_size(unit: np.ndarray) -> int:
        return sum(class_size[c] for c in unit)

    while len(units) < num_clusters:
        largest = max(range(len(units)), key=lambda i: (len(units[i]) > 1, unit_size(units[i])))
        unit = units.pop(largest)
        if len(unit) < 2:
            raise ValueError("gt_labels: fewer classes than clusters")
        units += [unit[0::2], unit[1::2]]
    order = sorted(range(len(units)), key=lambda i: (-unit_size(units[i]), int(units[i][0])))
    load = np.zeros(num_clusters, dtype=np.int64)
    cluster_of_class: dict[int, int] = {}
    for i in order:
        target = int(load.argmin())
        load[target] += unit_size(units[i])
        for c in units[i]:
            cluster_of_class[int(c)] = target
    return np.array([cluster_of_class[int(c)] for c in labels], dtype=np.int64)


def random_partition(num_samples: int, num_clusters: int, seed: int) -> np.ndarray:
    """A random partition of the samples into K near-equal parts, fixed for the run's seed."""
    order = np.random.default_rng([seed, 104729]).permutation(num_samples)
    clusters = np.empty(num_samples, dtype=np.int64)
    clusters[order] = np.arange(num_samples) % num_clusters
    return clusters


def binary_split(vectors: np.ndarray, previous: np.ndarray, num_previous: int, seed: int, iterations: int) -> np.ndarray:
    """TPAMI hierarchy: split every cluster c in two by 2-means; the children are 2c and 2c+1,
    so they inherit the two halves of the parent's block of the embedding."""
    clusters = np.empty(len(previous), dtype=np.int64)
    for parent in range(num_previous):
        members = np.flatnonzero(previous == parent)
        if len(members) < 2:
            clusters[members] = 2 * parent
            continue
        halves = kmeans(vectors[members], 2, seed=seed + parent, niter=iterations).assignment
        clusters[members] = 2 * parent + halves
    return clusters


# strategy -> the function computing a round's partition: (request, vectors) -> (clusters, cost).
# The names are the strategies of the grouping table (`groupings.GROUPINGS`).
Partitioner = Callable[["PartitionRequest", "np.ndarray | None"], tuple[np.ndarray, float]]
PARTITIONERS: dict[str, Partitioner] = {}


def partitioner(strategy: str) -> Callable[[Partitioner], Partitioner]:
    """Decorator: `fn` computes the partition of `strategy` (a strategy of the grouping table)."""

    def register(fn: Partitioner) -> Partitioner:
        PARTITIONERS[strategy] = fn
        return fn

    return register


@partitioner("kmeans")
def flat_kmeans(request: PartitionRequest, vectors: np.ndarray | None) -> tuple[np.ndarray, float]:
    seed = request.seed + 1000 * request.round
    result = kmeans(vectors, request.num_clusters, seed=seed, niter=request.kmeans_iterations, max_points=request.kmeans_sample)
    return result.assignment, result.objective


@partitioner("binary")
def binary_hierarchy(request: PartitionRequest, vectors: np.ndarray | None) -> tuple[np.ndarray, float]:
    """A split round halves every cluster; once the hierarchy has reached K, flat k-means."""
    if not request.splits:
        return flat_kmeans(request, vectors)
    seed = request.seed + 1000 * request.round
    return binary_split(vectors, request.previous, request.previous_num_clusters, seed, request.kmeans_iterations), float("nan")


@partitioner("random")
def random_strategy(request: PartitionRequest, vectors: np.ndarray | None) -> tuple[np.ndarray, float]:
    return random_partition(len(request.labels), request.num_clusters, request.seed), float("nan")


@partitioner("gt_labels")
def ground_truth_strategy(request: PartitionRequest, vectors: np.ndarray | None) -> tuple[np.ndarray, float]:
    return ground_truth_partition(request.labels, request.groups, request.num_clusters), float("nan")


def compute_assignment(request: PartitionRequest, vectors: np.ndarray | None) -> Assignment:
    """Run one round of the grouping strategy on the whole training set."""
    started = time.perf_counter()
    labels, k, previous = request.labels, request.num_clusters, request.previous
    num_previous = request.previous_num_clusters if previous is not None else 0
    cost = float("nan")
    known = [name for name in groupings.strategies() if name in PARTITIONERS]
    if request.strategy not in known:
        raise ValueError(f"unknown grouping strategy {request.strategy!r}; allowed: {', '.join(known)}")
    if request.splits and (previous is None or k != 2 * num_previous):
        raise ValueError(f"round {request.round}: a binary split needs the last round's clusters and K = 2 x {num_previous}, got K = {k}")
    if k == 1:
        clusters = np.zeros(len(labels), dtype=np.int64)
    else:
        clusters, cost = PARTITIONERS[request.strategy](request, vectors)
    # Every worker takes whole classes of each step's batch: a cluster needs 2 classes per worker.
    clusters, repaired = repair(clusters, labels, k, min_classes=2 * request.world_size, move_strays=request.move_strays)
    changed = float("nan")
    if previous is not None and num_previous == k:  # always matched, even when a cluster was empty
        clusters = match_to_previous(clusters, previous, k)
        changed = float((clusters != previous).mean())
    assignment = Assignment(
        version=request.round,
        clusters=clusters,
        num_clusters=k,
        strategy=request.strategy,
        cost=cost,
        seconds=time.perf_counter() - started,
        repaired=repaired,
        changed=changed,
    )
    assignment.stats = {"sizes": assignment.sizes(), "classes": assignment.classes_per_cluster(labels)}
    return assignment


class LocalGroupingService:
    """The grouping service of a single-process run: a plain function call."""

    def __call__(self, request: PartitionRequest) -> Assignment:
        vectors = None
        if request.needs_vectors:
            vectors = gather_vectors(len(request.labels), [(request.indices, request.vectors)])
        return compute_assignment(request, vectors)
