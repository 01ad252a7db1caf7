"""The cluster sampler: batches from one cluster, split across ranks, never an image twice."""

from __future__ import annotations

import numpy as np
import pytest

from dncml.trainers.sampler import ClusterBatchSampler

pytestmark = pytest.mark.usefixtures("one_thread")


def sampler_data(classes_in=(4, 6, 10, 20)):
    """Four clusters of unequal size (in classes), 6 samples per class."""
    class_cluster = np.repeat(np.arange(4), classes_in)
    labels = np.repeat(np.arange(len(class_cluster)), 6)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(labels))
    labels = labels[order]
    return labels, class_cluster[labels]


def test_sampler_batches_come_from_one_cluster():
    labels, clusters = sampler_data()
    sampler = ClusterBatchSampler(labels, batch_size=16, samples_per_class=4, seed=3)
    sampler.set_assignment(clusters, 4)
    steps = sampler.epoch(0, 60)
    for step in steps:
        assert len(step.indices) == 16 and len(set(step.indices.tolist())) == 16
        classes, counts = np.unique(labels[step.indices], return_counts=True)
        assert len(classes) == 4 and (counts == 4).all()
        assert (clusters[step.indices] == step.cluster).all()
        assert np.array_equal(step.global_indices, step.indices)

    again = ClusterBatchSampler(labels, 16, 4, seed=3)
    again.set_assignment(clusters, 4)
    assert all(a.cluster == b.cluster and np.array_equal(a.indices, b.indices) for a, b in zip(steps, again.epoch(0, 60)))
    other_epoch = again.epoch(1, 60)
    assert any(not np.array_equal(a.indices, b.indices) for a, b in zip(steps, other_epoch))

    # Uniform over clusters, not proportional to their size.
    counts = np.bincount([step.cluster for step in sampler.epoch(2, 4000)], minlength=4)
    assert np.abs(counts - 1000).max() < 120, counts


def test_sampler_ranks_split_each_global_batch():
    """batch_size is the global batch: two workers take 8 images each of one 16-image batch."""
    labels, clusters = sampler_data((8, 9, 12, 20))
    ranks = [ClusterBatchSampler(labels, 16, 4, seed=9, rank=r, world_size=2) for r in range(2)]
    for sampler in ranks:
        sampler.set_assignment(clusters, 4)
    for a, b in zip(*(sampler.epoch(4, 40) for sampler in ranks)):
        assert a.cluster == b.cluster
        assert len(a.indices) == len(b.indices) == 8 and len(a.global_indices) == 16
        assert not set(labels[a.indices]) & set(labels[b.indices])  # class-disjoint
        assert (clusters[a.indices] == a.cluster).all() and (clusters[b.indices] == a.cluster).all()
        assert np.array_equal(a.global_indices, b.global_indices)
        assert sorted(np.concatenate([a.indices, b.indices]).tolist()) == sorted(a.global_indices.tolist())


def test_sampler_never_repeats_an_image_in_a_batch():
    """Random grouping of 24-image classes into 8 clusters (the quick Table 6): most class /
    cluster pairs hold fewer than m = 4 images. No image twice in a batch (identical images are
    zero-distance positives), every class in a batch with >= 2 images, small clusters give
    smaller batches instead of repeats."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(60), 24)
    clusters = rng.integers(0, 8, len(labels))
    sampler = ClusterBatchSampler(labels, batch_size=128, samples_per_class=4, seed=1)
    sampler.set_assignment(clusters, 8)
    short = 0
    for step in sampler.epoch(0, 200):
        assert len(set(step.indices.tolist())) == len(step.indices) <= 128
        classes, counts = np.unique(labels[step.indices], return_counts=True)
        assert counts.min() >= 2 and counts.max() <= 4
        cut = [n for c, n in zip(classes, counts) if n != min(4, int(((labels == c) & (clusters == step.cluster)).sum()))]
        assert len(cut) <= 1 and (not cut or len(step.indices) == 128)  # all it has there, but for the batch's last class
        short += int(counts.min() < 4)
    assert short > 100  # the situation this guards against is the common one here

    tiny_cluster = np.where(labels < 3, 0, 1)  # cluster 0: 3 classes x 24 images
    sampler.set_assignment(tiny_cluster, 2)
    for step in sampler.epoch(1, 50):
        if step.cluster == 0:
            assert len(step.indices) == 12 and len(set(step.indices.tolist())) == 12  # 3 classes x 4, no repeats
