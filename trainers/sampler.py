"""Cluster-aware, class-balanced batches: m images per class, all from one learner's cluster.

pytorch-metric-learning's `MPerClassSampler` draws from the whole dataset and has no
distributed form; here the global batch of every step is drawn from one cluster with a seed
shared by all workers, and each worker takes its own whole classes of it. So every worker trains
the same learner at the same step and no two workers see the same class in a step.
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
    def __init__(self, labels: np.ndarray, batch_size: int, samples_per_class: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if batch_size % samples_per_class:
            raise ValueError(f"batch_size {batch_size} must be a multiple of samples_per_class {samples_per_class}")
        self.labels = np.asarray(labels)
        self.batch_size = batch_size  # per worker
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

    def epoch(self, epoch: int, steps: int) -> list[Step]:
        """The epoch's steps: a uniformly drawn cluster each, then this worker's part of a
        global batch of whole classes from that cluster. Deterministic in (seed, epoch)."""
        if not self._members:
            raise RuntimeError("set_assignment() before sampling")
        rng = np.random.default_rng([self.seed, epoch])
        classes_per_worker = self.batch_size // self.m
        global_classes = classes_per_worker * self.world_size
        schedule = []
        for _ in range(steps):
            cluster = int(rng.integers(self.num_clusters))
            members = self._members[cluster]
            if len(members) >= global_classes:
                chosen = rng.choice(len(members), size=global_classes, replace=False)
            else:
                # A small cluster: every class once before any class twice, so repeats are as
                # rare and as spread over the workers as the cluster allows.
                chosen = np.resize(rng.permutation(len(members)), global_classes)
            # Draw for every worker's classes, so all workers consume the same random stream;
            # a class drawn r times gets r * m different images where it has them.
            batches = [None] * global_classes
            for c in np.unique(chosen):
                slots = np.flatnonzero(chosen == c)
                need = self.m * len(slots)
                images = rng.choice(members[c], size=need, replace=len(members[c]) < need)
                for slot, part in zip(slots, np.split(images, len(slots))):
                    batches[slot] = part
            indices = np.concatenate(batches[self.rank * classes_per_worker:(self.rank + 1) * classes_per_worker])
            schedule.append(Step(cluster, indices, np.concatenate(batches)))
        return schedule
