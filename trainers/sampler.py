"""Cluster-aware, class-balanced batches: m images per class, all from one learner's cluster.

pytorch-metric-learning's `MPerClassSampler` draws from the whole dataset and has no
distributed form; here the global batch of every step (`batch_size`, the paper's batch) is drawn
from one cluster with a seed shared by all workers, and each worker takes its own whole classes of
it. So every worker trains the same learner at the same step and no two workers see the same
class in a step.

A batch never holds the same image twice (an identical pair would be a zero-distance positive):
a class gives at most m of its images in the cluster, drawn without replacement; a class with
fewer than m there gives all it has (at least 2: a class with one image in a cluster cannot form a
positive pair and is left out, as in the authors' code); a cluster smaller than a batch gives a
smaller batch rather than repeats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Step:
    cluster: int  # the learner trained at this step
    indices: np.ndarray  # this worker's training samples for the step
    global_indices: np.ndarray  # every worker's samples for the step


class ClusterBatchSampler:
    def __init__(self, labels: np.ndarray, batch_size: int, samples_per_class: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size % samples_per_class:
            raise ValueError(f"batch_size {batch_size} must be a multiple of samples_per_class {samples_per_class}")
        self.labels = np.asarray(labels)
        self.batch_size = batch_size  # global: all workers together
        self.m = samples_per_class
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._members: list[list[np.ndarray]] = []

    def set_assignment(self, clusters: np.ndarray, num_clusters: int) -> None:
        """Index, per cluster, the samples of each class that can form a positive pair there."""
        self._members = []
        for cluster in range(num_clusters):
            inside = np.flatnonzero(clusters == cluster)
            labels = self.labels[inside]
            order = np.argsort(labels, kind="stable")
            inside, labels = inside[order], labels[order]
            starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
            groups = np.split(inside, starts[1:]) if len(inside) else []
            usable = [g for g in groups if len(g) >= 2]
            if not usable:
                raise ValueError(f"cluster {cluster} has no class with >= 2 images: it cannot form a batch")
            self._members.append(usable)

    @property
    def num_clusters(self) -> int:
        return len(self._members)

    def round_robin_steps(self) -> int:
        """The authors' epoch: K x max_c floor(n_c / B) steps (n_c: cluster c's usable samples),
        so that every learner gets as many steps as the largest cluster has batches."""
        largest = max(sum(len(g) for g in members) for members in self._members)
        return self.num_clusters * max(1, largest // self.batch_size)

    def epoch(self, epoch: int, steps: int, schedule: str = "uniform") -> list[Step]:
        """The epoch's steps: a uniformly drawn cluster each (`uniform`) or the clusters in turn
        (`round_robin`, the authors' code: the shorter clusters are drawn from more often than
        their size), then this worker's part of a global batch of whole classes from that
        cluster. Deterministic in (seed, epoch)."""
        if not self._members:
            raise RuntimeError("set_assignment() before sampling")
        rng = np.random.default_rng([self.seed, epoch])
        schedule_steps = []
        for step in range(steps):
            cluster = step % self.num_clusters if schedule == "round_robin" else int(rng.integers(self.num_clusters))
            chunks = self._global_batch(rng, self._members[cluster])
            # whole classes, dealt to the workers in turn (all workers draw the same global batch)
            indices = np.concatenate(chunks[self.rank :: self.world_size] or [np.zeros(0, np.int64)])
            schedule_steps.append(Step(cluster, indices, np.concatenate(chunks)))
        return schedule_steps

    def _global_batch(self, rng: np.random.Generator, members: list[np.ndarray]) -> list[np.ndarray]:
        """Classes in random order, each giving min(m, its images here) distinct images, until
        the batch is full or the cluster has no class left."""
        chunks, room = [], self.batch_size
        for c in rng.permutation(len(members)):
            take = min(self.m, len(members[c]), room)
            if take < 2:
                break
            chunks.append(rng.choice(members[c], size=take, replace=False))
            room -= take
        return chunks
