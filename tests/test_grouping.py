"""The grouping strategies: Hungarian matching of a round to the last (stable learners), the repair
that makes every cluster batchable, ground-truth and random partitions, the binary hierarchy, and
the grouping table (every strategy has a partitioner; a grouping added to it trains)."""

from __future__ import annotations

import numpy as np
import pytest
from rigs import check_run, tiny

from dncml.trainers import divide_and_conquer as dnc
from dncml.trainers import grouping as grouping_service
from dncml.trainers import groupings
from dncml.trainers.faiss_ops import kmeans
from dncml.trainers.grouping import (
    LocalGroupingService,
    PartitionRequest,
    binary_split,
    compute_assignment,
    ground_truth_partition,
    match_to_previous,
    random_partition,
    repair,
)
from dncml.trainers.sampler import ClusterBatchSampler
from dncml.trainers.seam import Seam
from dncml.trainers.spec import GROUPINGS, SpecError, field_help

pytestmark = pytest.mark.usefixtures("one_thread")


def test_match_to_previous_undoes_a_relabeling():
    rng = np.random.default_rng(0)
    previous = rng.integers(0, 5, 600)
    permutation = np.array([2, 0, 4, 1, 3])
    relabeled = permutation[previous]
    assert not np.array_equal(relabeled, previous)
    assert np.array_equal(match_to_previous(relabeled, previous, 5), previous)

    # 10 % of the samples move: each new cluster keeps the learner it overlaps most.
    noisy = relabeled.copy()
    moved = rng.choice(len(noisy), size=60, replace=False)
    noisy[moved] = (noisy[moved] + rng.integers(1, 5, size=60)) % 5
    matched = match_to_previous(noisy, previous, 5)
    for new in range(5):
        members = noisy == new
        most = np.bincount(previous[members], minlength=5).argmax()
        assert (matched[members] == most).all()
    assert (matched != previous).mean() == pytest.approx(0.1)


def blobs(num_blobs=4, classes_per_blob=5, per_class=8, dim=16, seed=0):
    """Well separated clusters (on orthogonal axes); each holds whole classes. Shuffled."""
    rng = np.random.default_rng(seed)
    n = num_blobs * classes_per_blob * per_class
    blob = np.repeat(np.arange(num_blobs), classes_per_blob * per_class)
    labels = np.repeat(np.arange(num_blobs * classes_per_blob), per_class)
    vectors = np.eye(dim, dtype=np.float32)[blob] + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    order = rng.permutation(n)
    return vectors[order], labels[order], blob[order]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def kmeans_request(vectors, labels):
    """The fields of a k-means PartitionRequest into 4 clusters of `vectors`, all but its round and seed."""
    return dict(
        strategy="kmeans",
        num_clusters=4,
        labels=labels,
        groups=np.full(len(labels), -1),
        indices=np.arange(len(labels)),
        vectors=vectors,
        kmeans_iterations=20,
    )


def test_kmeans_rounds_keep_their_clusters():
    vectors, labels, blob = blobs()
    # Faiss k-means starts from random points, so some seeds merge two blobs (a local optimum that
    # no matching can fix). Take two seeds that find the blobs but number them differently.
    raw = {seed: kmeans(vectors, 4, seed=seed, niter=20).assignment for seed in range(60)}
    good = [seed for seed, clusters in raw.items() if same_partition(clusters, blob)]
    first_seed = good[0]
    second_seed = next(s for s in good[1:] if not np.array_equal(raw[s], raw[first_seed]))

    request = kmeans_request(vectors, labels)
    service = LocalGroupingService()
    first = service(PartitionRequest(round=0, seed=first_seed, **request))
    assert same_partition(first.clusters, blob) and first.repaired == 0 and first.version == 0
    # compute_assignment seeds round r with seed + 1000 r.
    second = service(PartitionRequest(round=1, seed=second_seed - 1000, previous=first.clusters, previous_num_clusters=4, **request))
    assert np.array_equal(second.clusters, first.clusters)
    assert second.changed == 0.0 and second.version == 1


def test_matching_is_not_skipped_when_the_last_round_had_an_empty_cluster():
    """The last round's cluster 3 was empty, so its labels only reach K - 2: the new round is
    still matched to it (learners keep their data), not handed out in k-means' own numbering."""
    vectors, labels, blob = blobs()
    previous = np.where(blob == 3, 2, blob)  # blobs 2 and 3 shared learner 2; learner 3 had nothing
    request = kmeans_request(vectors, labels)
    with pytest.raises(ValueError, match="previous_num_clusters"):
        PartitionRequest(round=1, seed=0, previous=previous, **request)
    for seed in range(20):
        assignment = LocalGroupingService()(PartitionRequest(round=1, seed=seed, previous=previous, previous_num_clusters=4, **request))
        if same_partition(assignment.clusters, blob):
            break
    # Blobs 0 and 1 keep learners 0 and 1 whatever numbering k-means chose; one of blobs 2 / 3
    # keeps learner 2 and the other gets the learner that had nothing.
    for b in (0, 1):
        assert (assignment.clusters[blob == b] == b).all()
    assert {int(assignment.clusters[blob == 2][0]), int(assignment.clusters[blob == 3][0])} == {2, 3}
    assert assignment.changed == pytest.approx((blob >= 2).mean() / 2)


def usable_classes(clusters, labels, k, per_class=2):
    return [int((np.unique(labels[clusters == c], return_counts=True)[1] >= per_class).sum()) for c in range(k)]


@pytest.mark.parametrize("seed", range(5))
def test_repair_makes_every_cluster_batchable(seed):
    rng = np.random.default_rng(seed)
    # 15 singleton classes and 10 classes of 2..5 samples (just over the 2 K = 8 needed);
    # random clusters leave many strays and clusters with fewer than 2 usable classes.
    sizes = np.r_[np.ones(15, int), np.full(6, 2), rng.integers(3, 6, 4)]
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    k = 4
    clusters = rng.integers(0, k, len(labels))
    assert min(usable_classes(clusters, labels, k)) < 2  # the case the repair exists for
    repaired, moved = repair(clusters, labels, k)
    assert min(usable_classes(repaired, labels, k)) >= 2
    assert moved == int((repaired != clusters).sum()) > 0
    assert repaired.min() >= 0 and repaired.max() < k

    # An empty cluster gets classes.
    clusters = rng.integers(0, k - 1, len(labels))
    assert (clusters == k - 1).sum() == 0
    repaired, _ = repair(clusters, labels, k)
    assert min(usable_classes(repaired, labels, k)) >= 2

    # A sampler can be built on the result.
    ClusterBatchSampler(labels, 8, 2, seed=0).set_assignment(repaired, k)


def test_repair_leaves_a_good_partition_alone():
    _, labels, blob = blobs()
    repaired, moved = repair(blob, labels, 4)
    assert moved == 0 and np.array_equal(repaired, blob)


def test_ground_truth_partition_keeps_groups_whole_and_balanced():
    # Six groups of 5, 4, 3, 3, 2, 1 classes x 10 samples: 180 samples, three clusters of 60 fit.
    classes_per_group = [5, 4, 3, 3, 2, 1]
    class_group = np.repeat(np.arange(6), classes_per_group)
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(len(class_group)), 10))
    groups = class_group[labels]
    clusters = ground_truth_partition(labels, groups, 3)
    for c in np.unique(labels):
        assert len(np.unique(clusters[labels == c])) == 1
    for g in np.unique(groups):
        assert len(np.unique(clusters[groups == g])) == 1, f"group {g} split"
    sizes = np.bincount(clusters, minlength=3)
    assert sizes.min() > 0 and sizes.max() / sizes.min() <= 1.2, sizes

    # Unequal classes: still balanced within the largest unit.
    labels = np.repeat(np.arange(12), np.arange(12) + 5)
    groups = labels // 2
    clusters = ground_truth_partition(labels, groups, 4)
    sizes = np.bincount(clusters, minlength=4)
    assert sizes.max() - sizes.min() <= 2 * 16 + 1, sizes  # the biggest group has 31 samples
    for g in np.unique(groups):
        assert len(np.unique(clusters[groups == g])) == 1


def test_ground_truth_partition_splits_groups_when_there_are_too_few():
    labels = np.repeat(np.arange(12), 5)
    groups = (labels >= 6).astype(np.int64)  # two groups of six classes, K = 4
    clusters = ground_truth_partition(labels, groups, 4)
    assert sorted(np.unique(clusters).tolist()) == [0, 1, 2, 3]
    for c in np.unique(labels):
        assert len(np.unique(clusters[labels == c])) == 1
    for k in range(4):
        assert len(np.unique(groups[clusters == k])) == 1  # a cluster is part of one group
        assert len(np.unique(labels[clusters == k])) == 3


def test_random_partition_is_seeded_and_balanced():
    a = random_partition(1003, 4, seed=5)
    assert np.array_equal(a, random_partition(1003, 4, seed=5))
    assert not np.array_equal(a, random_partition(1003, 4, seed=6))
    sizes = np.bincount(a, minlength=4)
    assert sizes.max() - sizes.min() <= 1


def test_binary_split_children_stay_under_their_parent():
    rng = np.random.default_rng(0)
    # Two parents, each made of two separated sub-blobs.
    centers = np.eye(8, dtype=np.float32)[:4] * 3
    sub = np.repeat(np.arange(4), 30)
    vectors = centers[sub] + 0.1 * rng.standard_normal((len(sub), 8)).astype(np.float32)
    order = rng.permutation(len(sub))
    vectors, sub = vectors[order], sub[order]
    parent = sub // 2
    children = binary_split(vectors, parent, 2, seed=0, iterations=20)
    for c in range(2):
        assert set(children[parent == c].tolist()) == {2 * c, 2 * c + 1}
    assert same_partition(children, sub)

    # Through compute_assignment (strategy binary, previous K = 2 -> K = 4): the same rule.
    labels = sub * 5 + rng.integers(0, 5, len(sub))
    request = PartitionRequest(
        round=2,
        strategy="binary",
        num_clusters=4,
        seed=0,
        labels=labels,
        groups=np.full(len(sub), -1),
        previous=parent,
        previous_num_clusters=2,
        splits=True,
        kmeans_iterations=20,
    )
    assignment = compute_assignment(request, vectors)
    assert ((assignment.clusters // 2) == parent).all()


def test_binary_hierarchy_run_doubles_the_learners(tmp_path, tiny_data):
    rounds = []

    def service(request):
        assignment = LocalGroupingService()(request)
        rounds.append((request, assignment))
        return assignment

    spec = tiny(hierarchy="binary", K=4, T=1, epochs=3, finetune_epochs=0, eval_every=10)
    history = []
    dnc.train(spec, Seam(report=lambda m, c: history.append(m), partition=service, checkpoint_root=str(tmp_path)), tiny_data)
    assert [m["active_learners"] for m in history] == [1, 2, 4]
    assert [len(eval(m["cluster_sizes"])) for m in history] == [1, 2, 4]
    assert [r.num_clusters for r, _ in rounds] == [1, 2, 4]
    # K = 2 -> 4: children of cluster c are 2c and 2c + 1 (the repair may move a few stray samples).
    (request, assignment) = rounds[2]
    follows = (assignment.clusters // 2) == request.previous
    assert follows.mean() >= 0.9, follows.mean()


def test_a_grouping_added_to_the_table_validates_and_trains(tmp_path, tiny_data):
    """Adding a grouping (CONTRIBUTING.md) is one entry of the table and the function computing its
    partition: a toy `by_label_parity` (even classes to learner 0, odd ones to learner 1) is then
    a valid `grouping:`, and a local run divides by it, asks for no vectors, keeps classes whole."""
    assert "by_label_parity" not in GROUPINGS
    groupings.GROUPINGS["by_label_parity"] = groupings.Grouping(strategy="by_label_parity", splits_embedding=True, needs_vectors=False)
    try:

        @grouping_service.partitioner("by_label_parity")
        def by_label_parity(request, vectors):
            assert vectors is None  # the table says it needs none: no embedding pass
            return request.labels % 2, float("nan")

        spec = tiny(grouping="by_label_parity", K=2, epochs=2, finetune_epochs=1, steps_per_epoch=2, eval_every=10)
        assert "by_label_parity" in field_help()["grouping"]
        assert spec.plan.divides and spec.plan.splits_embedding and spec.plan.strategy == "by_label_parity"
        rounds = []

        def service(request):
            assignment = LocalGroupingService()(request)
            rounds.append((request, assignment))
            return assignment

        history = []
        dnc.train(spec, Seam(report=lambda m, c: history.append(m), partition=service, checkpoint_root=str(tmp_path)), tiny_data)
        check_run(history, spec)
        assert [m["active_learners"] for m in history] == [2, 2, 1]  # divide, divide, conquer
        assert len(rounds) == 2 and all(not request.needs_vectors and request.vectors is None for request, _ in rounds)
        _, targets = np.unique(tiny_data.train.labels, return_inverse=True)
        assert all((assignment.clusters == targets % 2).all() for _, assignment in rounds)
        assert history[0]["class_purity"] == 1.0
    finally:
        del groupings.GROUPINGS["by_label_parity"]
        del grouping_service.PARTITIONERS["by_label_parity"]
    with pytest.raises(SpecError, match="allowed values are"):
        tiny(grouping="by_label_parity")


def test_every_strategy_of_the_grouping_table_has_a_partitioner():
    strategies = set(groupings.strategies())
    assert strategies == set(grouping_service.PARTITIONERS) == {"kmeans", "binary", "random", "gt_labels"}
    assert tuple(GROUPINGS) == ("none", "kmeans", "kmeans_nosplit", "random", "gt_labels")
    assert [name for name in GROUPINGS if tiny(grouping=name).plan.splits_embedding] == ["kmeans", "random", "gt_labels"]
    assert [tiny(grouping=name).plan.strategy for name in GROUPINGS] == ["none", "kmeans", "kmeans", "random", "gt_labels"]
    assert tiny(grouping="kmeans", hierarchy="binary").plan.strategy == "binary"
    with pytest.raises(SpecError, match="not kmeans_nosplit"):
        tiny(grouping="kmeans_nosplit", masks="learned")
    with pytest.raises(SpecError, match="needs grouping 'kmeans'"):
        tiny(grouping="random", hierarchy="binary")
