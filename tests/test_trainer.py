"""The divide-and-conquer trainer: gradient isolation of the learners, the grouping strategies
(Hungarian matching, repair, ground-truth and random partitions, the binary hierarchy), the
cluster sampler, K = 1 == baseline, checkpoint / resume, RunSpec validation and a short run that
actually learns. Everything runs on tiny rendered glyphs (16x16, a few dozen classes) on CPU."""

from __future__ import annotations

import math
import os
import time

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dncml.trainers import divide_and_conquer as dnc
from dncml.trainers import embedding, groupings
from dncml.trainers import grouping as grouping_service
from dncml.trainers.checkpoints import load_checkpoint
from dncml.trainers.data.loading import load_dataset
from dncml.trainers.embedding import EmbeddingBank
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
from dncml.trainers.model import DivideAndConquerNet
from dncml.trainers.pretrain import resolve_weights
from dncml.trainers.runtime import make_optimizer
from dncml.trainers.sampler import ClusterBatchSampler
from dncml.trainers.seam import LocalRun, Seam, World
from dncml.trainers.spec import GROUPINGS, LOSSES, SpecError, field_help, from_dict, parse_overrides

TINY = dict(
    glyph_classes=48,
    glyph_instances=12,
    image_size=16,
    embedding_dim=32,
    batch_size=16,
    samples_per_class=4,
    K=4,
    T=1,
    warmup_epochs=0,
    epochs=2,
    finetune_epochs=1,
    lr=1e-3,
    lr_embedding=1e-3,
    steps_per_epoch=3,
    kmeans_iterations=10,
)


def tiny(**changes):
    return from_dict({**TINY, **changes})


@pytest.fixture(scope="session", autouse=True)
def glyph_cache(tmp_path_factory):
    """Render glyphs once per test session, into a private cache."""
    previous = os.environ.get("DNCML_CACHE")
    os.environ["DNCML_CACHE"] = str(tmp_path_factory.mktemp("dncml-cache"))
    yield
    if previous is None:
        os.environ.pop("DNCML_CACHE", None)
    else:
        os.environ["DNCML_CACHE"] = previous


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a small, shared CPU, OpenMP threads that spin-wait for each other
    make steps an order of magnitude slower (and timings erratic) when other work is running."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_data():
    return load_dataset(tiny(), progress=False)


def run(spec, root, data=None, resume_from=None, report=None):
    """Train in-process; returns (reported metrics, final state, final model state_dict)."""
    history, checkpoints = [], []

    def reporter(metrics, checkpoint):
        history.append(metrics)
        checkpoints.append(checkpoint)
        if report is not None:
            report(metrics, checkpoint)

    state = dnc.train(spec, Seam(report=reporter, checkpoint_root=str(root), resume_from=resume_from), data)
    return history, state, load_checkpoint(checkpoints[-1])["model"]


def assert_state_dicts_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"tensors differ: {different}"


def batch(num_classes=4, m=4, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(m)
    # Images that depend on the class, so metric losses have something to pull together.
    prototypes = torch.randn(num_classes, 1, size, size, generator=generator)
    images = prototypes[labels] + 0.5 * torch.randn(len(labels), 1, size, size, generator=generator)
    return images, labels


# ============================================================================ 1. the learners


def test_gradient_isolation_and_adam_leaves_other_learners_alone():
    spec = tiny(K=4, embedding_dim=32)
    torch.manual_seed(0)
    net = DivideAndConquerNet(spec, in_channels=1, num_classes=8)
    optimizer, _ = make_optimizer(spec, net)
    images, labels = batch()

    # A step through every learner (and the full embedding) gives Adam momentum everywhere.
    optimizer.zero_grad(set_to_none=True)
    total = sum(net(images, labels, (k, k + 1))[0] for k in range(4)) + net(images, labels, (0, 4))[0]
    total.backward()
    assert all(p.grad is not None for layer in net.learner_layers for p in layer.parameters())
    optimizer.step()

    # Learner 1 only.
    optimizer.zero_grad(set_to_none=True)
    loss, _ = net(images, labels, (1, 2))
    assert loss.item() > 0
    loss.backward()
    for k, layer in enumerate(net.learner_layers):
        for p in layer.parameters():
            if k == 1:
                assert p.grad is not None and p.grad.abs().sum() > 0
            else:
                assert p.grad is None, f"learner {k} got a gradient from learner 1's step"
    for key, loss_module in net.losses.items():
        if key != "1-2":
            assert all(p.grad is None for p in loss_module.parameters()), key
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone.parameters())

    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    optimizer.step()
    after = dict(net.named_parameters())
    for k in range(4):
        for suffix in ("weight", "bias"):
            name = f"learner_layers.{k}.{suffix}"
            same = torch.equal(before[name], after[name])
            assert same == (k != 1), f"{name}: {'unchanged' if same else 'changed'}"
    for name in before:
        if name.startswith("losses.") and not name.startswith("losses.1-2."):
            assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["backbone.body.0.weight"], after["backbone.body.0.weight"])

    # Test time: the full embedding is the concatenation of the separately normalised slices.
    net.eval()
    with torch.no_grad():
        features = net.features(images)
        raw = [layer(features) for layer in net.learner_layers]
        expected = torch.cat([F.normalize(r, dim=1) for r in raw], dim=1)
        torch.testing.assert_close(net.embed(images), expected)
        torch.testing.assert_close(net.learner_embedding(features, (1, 2)), F.normalize(raw[1], dim=1))
        _, vectors = net(images, labels, (2, 3))  # the cluster-space vectors a training step returns
        torch.testing.assert_close(vectors, F.normalize(expected, dim=1))
    assert sum(p.numel() for p in net.learner_layers.parameters()) == (128 + 1) * 32  # independent of K


def test_full_embedding_is_the_concatenation_of_normalised_slices():
    """The authors' model: every learner's slice is L2-normalised on its own, in every use. A
    slice with a large raw norm must not dominate the full embedding (it does when the raw
    concatenation is normalised as a whole); the baseline and kmeans_nosplit stay one vector
    normalised as a whole."""
    images, labels = batch()
    split = tiny(K=4, embedding_dim=32)
    torch.manual_seed(0)
    net = DivideAndConquerNet(split, in_channels=1, num_classes=8).eval()
    with torch.no_grad():
        net.learner_layers[0].weight.mul_(100.0)  # learner 0's raw slice is now ~100x the others'
        net.learner_layers[0].bias.mul_(100.0)
        full = net.embed(images)
        slice_norms = full.reshape(len(full), 4, 8).norm(dim=2)
        torch.testing.assert_close(slice_norms, torch.ones_like(slice_norms))  # every learner counts equally
        conquer = net.learner_embedding(net.features(images), (0, 4))  # what the full-embedding loss sees
        torch.testing.assert_close(conquer, full / 2.0)  # the same direction, unit norm (sqrt(K) = 2)
    assert split.embedding_form == "slices"

    for grouping in ("none", "kmeans_nosplit"):
        whole = tiny(K=4, embedding_dim=32, grouping=grouping)
        torch.manual_seed(0)
        baseline = DivideAndConquerNet(whole, in_channels=1, num_classes=8).eval()
        with torch.no_grad():
            features = baseline.features(images)
            raw = torch.cat([layer(features) for layer in baseline.learner_layers], dim=1)
            torch.testing.assert_close(baseline.embed(images), F.normalize(raw, dim=1))
            torch.testing.assert_close(baseline.learner_embedding(features, (0, 4)), F.normalize(raw, dim=1))
        assert whole.embedding_form == "whole"


# =================================================================== 2. Hungarian stability


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


def test_kmeans_rounds_keep_their_clusters():
    vectors, labels, blob = blobs()
    # Faiss k-means starts from random points, so some seeds merge two blobs (a local optimum that
    # no matching can fix). Take two seeds that find the blobs but number them differently.
    raw = {seed: kmeans(vectors, 4, seed=seed, niter=20).assignment for seed in range(60)}
    good = [seed for seed, clusters in raw.items() if same_partition(clusters, blob)]
    first_seed = good[0]
    second_seed = next(s for s in good[1:] if not np.array_equal(raw[s], raw[first_seed]))

    request = dict(
        strategy="kmeans",
        num_clusters=4,
        labels=labels,
        groups=np.full(len(labels), -1),
        indices=np.arange(len(labels)),
        vectors=vectors,
        kmeans_iterations=20,
    )
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
    request = dict(
        strategy="kmeans",
        num_clusters=4,
        labels=labels,
        groups=np.full(len(labels), -1),
        indices=np.arange(len(labels)),
        vectors=vectors,
        kmeans_iterations=20,
    )
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


# ======================================================================= 3. K = 1 == baseline


def test_one_learner_equals_the_baseline(tmp_path, tiny_data):
    schedule = dict(K=1, T=1, epochs=2, finetune_epochs=1, seed=7)
    divided, _, divided_model = run(tiny(grouping="kmeans", **schedule), tmp_path / "a", tiny_data)
    baseline, _, baseline_model = run(tiny(grouping="none", **schedule), tmp_path / "b", tiny_data)
    assert [m["phase"] for m in divided] == ["divide", "divide", "conquer"]
    assert [m["phase"] for m in baseline] == ["baseline"] * 3
    assert [m["loss"] for m in divided] == [m["loss"] for m in baseline]
    assert_state_dicts_equal(divided_model, baseline_model)
    assert divided[-1]["test_recall@1"] == baseline[-1]["test_recall@1"]


def test_the_seed_fixes_the_initial_weights(tmp_path, tiny_data):
    spec = tiny(grouping="none", epochs=1, finetune_epochs=0, steps_per_epoch=1)
    torch.manual_seed(123)  # global RNG state must not leak into the run
    first = run(spec, tmp_path / "a", tiny_data)
    torch.manual_seed(456)
    second = run(spec, tmp_path / "b", tiny_data)
    assert_state_dicts_equal(first[2], second[2])
    third = run(spec.replace(seed=1), tmp_path / "c", tiny_data)
    assert not torch.equal(first[2]["backbone.body.0.weight"], third[2]["backbone.body.0.weight"])


def test_a_seed_means_the_same_start_in_every_row(tmp_path, tiny_data):
    """The embedding is initialised once, as one d-dim layer, and sliced into the learners: the
    initial weights are the same for every K, and before the first division every grouping (split
    or not, any K) trains the same undivided model, so the warm-up epoch is identical."""
    images, labels = batch()
    initial = {}
    for k in (1, 2, 4, 8):
        torch.manual_seed(0)
        net = DivideAndConquerNet(tiny(K=k), in_channels=1, num_classes=8)
        initial[k] = torch.cat([layer.weight for layer in net.learner_layers]), torch.cat([layer.bias for layer in net.learner_layers])
        assert len(net.learner_layers) == k
    for k in (2, 4, 8):
        assert torch.equal(initial[k][0], initial[1][0]) and torch.equal(initial[k][1], initial[1][1]), k

    schedule = dict(warmup_epochs=1, epochs=1, finetune_epochs=0, steps_per_epoch=2, seed=3)
    rows = [("none", 1), ("none", 4), ("random", 4), ("gt_labels", 4), ("kmeans_nosplit", 4), ("kmeans", 4), ("kmeans", 2)]
    first = {}
    for grouping, k in rows:
        history, _, _ = run(tiny(grouping=grouping, K=k, **schedule), tmp_path / f"{grouping}-{k}", tiny_data)
        first[grouping, k] = (history[0]["loss"], history[0]["val_recall@1"], history[0]["val_map@r"])
        assert history[0]["phase"] == "warmup"
    assert len(set(first.values())) == 1, first
    assert tiny(grouping="kmeans").embedding_form == "slices"  # the split rows do divide afterwards


# ================================================================================ 4. sampler


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


# ================================================================================= 5. repair


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


# ======================================================== 6. ground-truth and random partitions


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


# ======================================================================= 7. binary hierarchy


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


# ================================================================ 8. every strategy and loss

EPOCH_KEYS = {
    "epoch",
    "total_epochs",
    "phase",
    "active_learners",
    "assignment_version",
    "loss",
    "steps",
    "train_seconds",
    "images_per_second",
    "lr",
    "best_epoch",
    "best_val_recall@1",
    "epoch_seconds",
}
EVAL_KEYS = {
    f"{split}_{metric}" for split in ("val", "test") for metric in ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r")
}
ROUND_KEYS = {"reclustered", "cluster_seconds", "embed_seconds", "kmeans_seconds", "cluster_sizes"}


def check_run(history, spec):
    assert len(history) == spec.total_epochs
    for epoch, metrics in enumerate(history):
        assert metrics.keys() >= EPOCH_KEYS, EPOCH_KEYS - metrics.keys()
        assert math.isfinite(metrics["loss"]), metrics
        assert metrics["steps"] == spec.steps_per_epoch
        assert metrics["phase"] == spec.plan.phase(epoch)
        if spec.plan.reclusters_at(epoch):
            assert metrics.keys() >= ROUND_KEYS
    assert history[-1].keys() >= EVAL_KEYS
    assert all(math.isfinite(history[-1][key]) for key in EVAL_KEYS)


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_every_grouping_runs(grouping, tmp_path, tiny_data):
    spec = tiny(grouping=grouping, epochs=2, finetune_epochs=1, steps_per_epoch=2, eval_every=10)
    history, _, _ = run(spec, tmp_path, tiny_data)
    check_run(history, spec)
    expected = {"none": 1, "kmeans": 4, "kmeans_nosplit": 1, "random": 4, "gt_labels": 4}[grouping]
    assert history[0]["active_learners"] == expected
    if grouping != "none":
        assert len(eval(history[0]["cluster_sizes"])) == 4


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


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_runs(loss, tmp_path, tiny_data):
    spec = tiny(loss=loss, epochs=1, finetune_epochs=1, steps_per_epoch=2, eval_every=10)
    history, _, model = run(spec, tmp_path, tiny_data)
    check_run(history, spec)
    assert all(torch.isfinite(t).all() for t in model.values() if t.is_floating_point())


@pytest.mark.parametrize(
    "options",
    [
        dict(masks="learned"),
        dict(embedding_source="training_pass"),
        dict(cluster_space="backbone"),
        dict(cluster_space="backbone", embedding_source="training_pass"),
        dict(hierarchy="binary", K=2),
        dict(freeze_bn="all", lr_decay_every=1),
        dict(freeze_bn="stats", full_embedding_from=1),
        dict(masks="learned", hierarchy="binary", K=4),
        dict(freeze_backbone_epochs=1, T=2),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_options_run(options, tmp_path, tiny_data):
    spec = tiny(epochs=2, finetune_epochs=1, steps_per_epoch=2, eval_every=10, **options)
    history, _, _ = run(spec, tmp_path, tiny_data)
    check_run(history, spec)
    if spec.recluster_every == 1:
        assert history[1]["reclustered"] and history[1]["assignment_version"] == 1


def test_backbone_rests_after_each_reclustering_and_full_embedding_phase(tmp_path, tiny_data):
    """TPAMI: the backbone does not move in the epoch of a re-clustering (freeze_backbone_epochs
    = 1, T = 2); the CVPR code's full-embedding phase: from `full_embedding_from` on, the loss uses
    the full embedding while batches still come from the clusters."""
    spec = tiny(T=2, epochs=4, finetune_epochs=0, freeze_backbone_epochs=1, full_embedding_from=2, steps_per_epoch=2, eval_every=10)
    snapshots = []

    def report(metrics, checkpoint):
        snapshots.append(load_checkpoint(checkpoint)["model"])

    history, _, _ = run(spec, tmp_path, tiny_data, report=report)
    assert [m["backbone_rests"] for m in history] == [True, False, True, False]
    assert [m["full_embedding"] for m in history] == [False, False, True, True]
    assert [m["active_learners"] for m in history] == [4, 4, 1, 1]  # one block: the full embedding
    assert all(m["assignment_version"] >= 0 for m in history)  # ... on the clusters' batches
    backbone = "backbone.body.0.weight"
    assert torch.equal(snapshots[1][backbone], run_initial_backbone(spec, tiny_data)[backbone]) is False
    assert torch.equal(snapshots[2][backbone], snapshots[1][backbone])  # epoch 2 re-clustered: rested
    assert not torch.equal(snapshots[3][backbone], snapshots[2][backbone])
    assert not torch.equal(snapshots[2]["learner_layers.0.weight"], snapshots[1]["learner_layers.0.weight"])


def run_initial_backbone(spec, data):
    weights = resolve_weights(spec)
    torch.manual_seed(spec.seed)
    return DivideAndConquerNet(spec, data.channels, len(np.unique(data.train.labels)), weights).state_dict()


def test_pretrained_backbone_has_frozen_batchnorm(tmp_path, tiny_data):
    """freeze_bn auto: a pretrained backbone keeps its BatchNorm statistics and affine
    parameters for the whole run (a from-scratch one trains them)."""
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    spec = tiny(backbone="resnet18", pretrained=str(weights), image_size=32, epochs=1, finetune_epochs=0, steps_per_epoch=2, eval_every=10)
    assert spec.resolved_freeze_bn == "all" and tiny().resolved_freeze_bn == "none"
    torch.manual_seed(spec.seed)
    data = load_dataset(spec, progress=False)
    before = run_initial_backbone(spec, data)
    _, _, after = run(spec, tmp_path / "run", data)
    bn = [k for k in before if ".bn1." in k or ".bn2." in k or k.startswith("backbone.net.bn1")]
    assert bn and all(torch.equal(before[k], after[k]) for k in bn if not k.endswith("num_batches_tracked")), [
        k for k in bn if not torch.equal(before[k], after[k])
    ]
    assert not torch.equal(before["backbone.net.conv1.weight"], after["backbone.net.conv1.weight"])
    stats_only = spec.replace(freeze_bn="stats")
    _, _, after_stats = run(stats_only, tmp_path / "stats", data)
    assert torch.equal(before["backbone.net.bn1.running_mean"], after_stats["backbone.net.bn1.running_mean"])
    assert not torch.equal(before["backbone.net.bn1.weight"], after_stats["backbone.net.bn1.weight"])  # the authors' code


def test_learned_masks_start_at_ones_learn_faster_and_split_with_the_hierarchy(tmp_path, tiny_data):
    spec = tiny(
        masks="learned",
        hierarchy="binary",
        K=4,
        T=1,
        epochs=3,
        finetune_epochs=0,
        steps_per_epoch=2,
        eval_every=10,
        mask_lr_multiplier=100.0,
    )
    torch.manual_seed(0)
    net = DivideAndConquerNet(spec, 1, 8)
    assert all(torch.equal(mask, torch.ones(32)) for mask in net.masks)  # the authors' init
    optimizer, _ = make_optimizer(spec, net)
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert rates["masks"] == pytest.approx(100 * spec.lr) and rates["embedding"] == spec.lr_embedding
    # K = 2 -> 4: the second child (1, 2) of parent (0, 2) starts as a copy of its parent's mask.
    with torch.no_grad():
        net.masks[0].mul_(0.5)
        net.masks[2].mul_(0.25)
    assert spec.plan.splits_at(2) and spec.plan.mask_copies(2) == [(1, 0), (3, 2)]  # the plan's sibling rule
    assert spec.plan.mask_copies(1) == [(2, 0)] and spec.plan.mask_copies(0) == []  # K = 1 -> 2; round 0 splits nothing
    copied = net.set_learner_blocks([(0, 1), (1, 2), (2, 3), (3, 4)], spec.plan.mask_copies(2))
    assert torch.equal(net.masks[1], net.masks[0]) and torch.equal(net.masks[3], net.masks[2])
    assert {id(p) for p in copied} == {id(net.masks[1]), id(net.masks[3])}
    assert net.active_masks == [0, 1, 2, 3]
    history, _, _ = run(spec, tmp_path, tiny_data)
    assert [m["active_learners"] for m in history] == [1, 2, 4]
    assert spec.embedding_form == "whole"  # masks are off at test time


# ========================================================================= 9. resume


class Interrupted(Exception):
    pass


def interrupted_run(spec, root, data, after_epoch: int = 1) -> LocalRun:
    """A run stopped right after `after_epoch` was reported (its checkpoints in root / "run",
    scratch in root / "tmp"); the LocalRun that kept them."""
    local = LocalRun(root / "run", printer=None)

    def interrupting(metrics, checkpoint):
        local(metrics, checkpoint)
        if metrics["epoch"] == after_epoch:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(spec, root / "tmp", data, report=interrupting)
    return local


@pytest.mark.parametrize("source", ["full_pass", "training_pass"])
def test_resume_continues_identically(source, tmp_path, tiny_data):
    # T = 2: epoch 2 re-clusters from the restored assignment (and, for training_pass, the
    # restored bank of vectors from epochs 0 and 1).
    spec = tiny(embedding_source=source, T=2, epochs=3, finetune_epochs=0, steps_per_epoch=4, eval_every=10)
    straight, _, straight_model = run(spec, tmp_path / "straight", tiny_data)

    local = interrupted_run(spec, tmp_path, tiny_data)
    checkpoint = local.latest_checkpoint()
    assert checkpoint is not None and checkpoint.endswith("epoch-0001")
    assert [m["loss"] for m in local.history] == [m["loss"] for m in straight[:2]]

    resumed, state, resumed_model = run(spec, tmp_path / "tmp", tiny_data, resume_from=checkpoint)
    assert [m["epoch"] for m in resumed] == [2]
    assert resumed[0]["reclustered"]
    assert resumed[0]["loss"] == straight[2]["loss"]
    assert resumed[0]["cluster_sizes"] == straight[2]["cluster_sizes"]
    assert resumed[0]["cluster_changed"] == straight[2]["cluster_changed"]
    assert len(state.history) == 3
    assert_state_dicts_equal(straight_model, resumed_model)


class SelectEpoch:
    """`dnc.evaluate`, with the validation Recall@1 rigged so that model selection chooses
    `epoch` (a tiny run's own numbers rarely choose an earlier epoch); test metrics are real."""

    def __init__(self, epoch: int):
        self.epoch, self.validations = epoch, 0

    def __call__(self, net, data, spec, device, validation=True, test=True):
        metrics = embedding.evaluate(net, data, spec, device, validation=validation, test=test)
        if validation:
            # rising until the chosen epoch, so that no tie leaves the choice to the data
            metrics["val_recall@1"] = 1.0 if self.validations == self.epoch else 0.5 + 0.01 * self.validations
            self.validations += 1
        return metrics


@pytest.mark.parametrize("selected_epoch", [0, 2])
def test_test_eval_selected_equals_every_eval_at_the_selected_epoch(selected_epoch, tmp_path, tiny_data, monkeypatch):
    """`test_eval: selected` embeds the test set once, on the selected weights; its numbers are the
    ones `every_eval` reports at the selected epoch, also when a resume comes between the two."""
    spec = tiny(epochs=3, finetune_epochs=0, steps_per_epoch=2, eval_every=1)
    monkeypatch.setattr(dnc, "evaluate", SelectEpoch(selected_epoch))
    every, _, every_model = run(tiny(**{**spec.to_dict(), "test_eval": "every_eval"}), tmp_path / "every", tiny_data)
    assert [m["best_epoch"] for m in every] == ([0, 0, 0] if selected_epoch == 0 else [0, 1, 2])
    test_names = [name for name in every[0] if name.startswith("test_")]
    assert {"test_recall@1", "test_nmi", "test_map@r"} <= set(test_names)

    monkeypatch.setattr(dnc, "evaluate", SelectEpoch(selected_epoch))
    selected, _, selected_model = run(spec, tmp_path / "selected", tiny_data)
    assert [m["best_epoch"] for m in selected] == [m["best_epoch"] for m in every]
    assert [m["val_map@r"] for m in selected] == [m["val_map@r"] for m in every]
    for name in test_names:
        assert abs(selected[-1]["selected_" + name] - every[selected_epoch][name]) <= 1e-6, name
    assert not [name for m in selected[:-1] for name in m if name.startswith(("test_", "selected_"))]
    # the last epoch's own test_* only where it is the selected one; its weights stay the last
    assert ("test_recall@1" in selected[-1]) == (selected_epoch == 2)
    assert_state_dicts_equal(every_model, selected_model)

    # Interrupted after epoch 1 and resumed: the checkpoint carries the selected weights.
    monkeypatch.setattr(dnc, "evaluate", SelectEpoch(selected_epoch))
    local = interrupted_run(spec, tmp_path, tiny_data)
    resumed, _, _ = run(spec, tmp_path / "tmp", tiny_data, resume_from=local.latest_checkpoint())
    assert [m["epoch"] for m in resumed] == [2]
    for name in test_names:
        assert abs(resumed[-1]["selected_" + name] - every[selected_epoch][name]) <= 1e-6, name


# ================================================================== 10. RunSpec validation


def test_spec_validation_messages():
    with pytest.raises(SpecError, match="K must divide"):
        from_dict(dict(K=7, d=64))
    with pytest.raises(SpecError, match="did you mean num_learners"):
        from_dict(dict(num_lerners=4))
    with pytest.raises(SpecError) as error:
        from_dict(dict(grouping="kmean"))
    assert all(name in str(error.value) for name in GROUPINGS)
    with pytest.raises(SpecError, match="multiple of samples_per_class"):
        from_dict(dict(batch_size=18, m=4))
    with pytest.raises(SpecError, match="samples_per_class"):
        from_dict(dict(m=1))
    with pytest.raises(SpecError, match="recluster_every"):
        from_dict(dict(T=0))
    with pytest.raises(SpecError, match="group labels"):
        from_dict(dict(grouping="gt_labels", dataset="cub", data_root="/nonexistent"))
    with pytest.raises(SpecError, match="power of 2"):
        from_dict(dict(hierarchy="binary", K=6, d=96))
    with pytest.raises(SpecError, match="must be int"):
        from_dict(dict(K="eight"))


def test_spec_coercion():
    overrides = parse_overrides(["K=8", "T=3", "lr=1e-4", "amp=yes", "glyph_classes=null", "grouping=random", "d=64"])
    spec = from_dict({}, overrides)
    assert spec.num_learners == 8 and isinstance(spec.num_learners, int)
    assert spec.recluster_every == 3 and spec.embedding_dim == 64
    assert spec.lr == pytest.approx(1e-4) and isinstance(spec.lr, float)
    assert spec.amp is True and spec.glyph_classes is None and spec.grouping == "random"
    assert from_dict(dict(amp="off", freeze_bn=1, learn_beta="False")).amp is False
    assert from_dict(dict(freeze_bn=1)).freeze_bn == "all" and from_dict(dict(freeze_bn=False)).freeze_bn == "none"
    assert from_dict(dict(learn_beta="False")).learn_beta is False
    assert from_dict(dict(K="8")).num_learners == 8
    with pytest.raises(SpecError, match="amp"):
        from_dict(dict(amp="maybe"))
    with pytest.raises(SpecError):
        parse_overrides(["K"])


def test_too_many_learners_for_the_data_fails_before_training(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the spec check")

    monkeypatch.setattr(dnc, "DivideAndConquerNet", no_model)
    spec = tiny(glyph_classes=16, K=4, batch_size=8, m=2)  # 6 training classes: K <= 3
    reports = []
    with pytest.raises(SpecError, match=r"K must be <= training classes / \(2 x 1 worker"):
        dnc.train(spec, Seam(report=lambda m, c: reports.append(m), checkpoint_root=str(tmp_path)))
    assert not reports
    # The baseline has no such limit: it gets as far as building the model.
    with pytest.raises(AssertionError, match="model was built"):
        dnc.train(spec.replace(grouping="none"), Seam(report=lambda m, c: None, checkpoint_root=str(tmp_path)))


# =========================================================================== 11. it learns


def test_a_short_run_learns(tmp_path):
    started = time.perf_counter()
    spec = from_dict(
        dict(
            glyph_classes=200,
            glyph_instances=12,
            image_size=32,
            d=64,
            K=2,
            warmup_epochs=1,
            epochs=2,
            finetune_epochs=1,
            batch_size=32,
            lr=1e-3,
            lr_embedding=1e-3,
            kmeans_iterations=20,
            eval_every=100,
        )
    )
    data = load_dataset(spec, progress=False)
    torch.manual_seed(spec.seed)  # the same initial weights as the run's
    untrained = DivideAndConquerNet(spec, data.channels, len(np.unique(data.train.labels)))
    before = embedding.evaluate(untrained, data, spec, torch.device("cpu"))["test_recall@1"]
    history, _, _ = run(spec, tmp_path, data)
    after = history[-1]["test_recall@1"]
    assert [m["phase"] for m in history] == ["warmup", "divide", "divide", "conquer"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert after >= before + 0.05, (before, after)
    print(f"test_recall@1 {before:.3f} -> {after:.3f} in {time.perf_counter() - started:.1f} s")


# ============================================================ 12. training_pass collection


def test_training_pass_needs_no_extra_pass_when_everything_was_seen(tiny_data, monkeypatch):
    spec = tiny(embedding_source="training_pass")
    n = len(tiny_data.train)
    net = DivideAndConquerNet(spec, tiny_data.channels, len(np.unique(tiny_data.train.labels)))
    embedded = []
    real_embed_split = embedding.embed_split

    def counting(net, split, spec, device, space="embedding", indices=None):
        embedded.append(np.arange(len(split)) if indices is None else np.asarray(indices))
        return real_embed_split(net, split, spec, device, space, indices)

    monkeypatch.setattr(dnc, "embed_split", counting)
    bank = EmbeddingBank(n)
    bank.vectors = np.random.default_rng(0).standard_normal((n, spec.embedding_dim)).astype(np.float32)
    bank.seen[:] = True
    bank.seen_globally[:] = True
    indices, vectors = dnc.collect_vectors(spec, net, tiny_data, World(), bank)
    assert all(len(e) == 0 for e in embedded), [len(e) for e in embedded]
    assert np.array_equal(np.sort(indices), np.arange(n))
    assert np.array_equal(vectors, bank.vectors[indices])

    # Half seen: exactly the unseen half gets a pass, and every sample is covered once.
    embedded.clear()
    bank.seen[:] = bank.seen_globally[:] = np.arange(n) % 2 == 0
    indices, vectors = dnc.collect_vectors(spec, net, tiny_data, World(), bank)
    assert sum(len(e) for e in embedded) == n // 2
    assert np.array_equal(np.concatenate(embedded), np.arange(1, n, 2))
    assert np.array_equal(np.sort(indices), np.arange(n))
    order = np.argsort(indices)
    full = embedding.embed_split(net, tiny_data.train, spec, torch.device("cpu"))
    np.testing.assert_allclose(vectors[order][1::2], full[1::2], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(vectors[order][0::2], bank.vectors[0::2])

    # No bank yet (the first round): one full pass.
    embedded.clear()
    indices, _ = dnc.collect_vectors(spec, net, tiny_data, World(), EmbeddingBank(n))
    assert sum(len(e) for e in embedded) == n and np.array_equal(indices, np.arange(n))


@pytest.mark.parametrize("stale_rounds", [0, 1, 2])
def test_bank_vectors_expire_after_stale_rounds(stale_rounds):
    n = 10
    bank = EmbeddingBank(n, stale_rounds)
    bank.record(np.arange(4), torch.ones(4, 3), global_indices=np.arange(6))
    for round_index in range(stale_rounds + 1):
        assert bank.seen[:4].all() and not bank.seen[4:].any(), round_index
        assert bank.seen_globally[:6].all() and not bank.seen_globally[6:].any()
        bank.reset()
    assert not bank.seen.any() and not bank.seen_globally.any()  # expired after stale_rounds rounds
    bank.record(np.array([7]), torch.zeros(1, 3), global_indices=np.array([7]))
    assert bank.seen.tolist() == [i == 7 for i in range(n)]  # a fresh vector is usable again


class _Payload:
    """A pickled object that would run code when unpickled (writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_cannot_run_code_when_loaded(tmp_path, tiny_data):
    spec = tiny(epochs=1, finetune_epochs=0, steps_per_epoch=1, eval_every=10)
    _, _, model = run(spec, tmp_path / "run", tiny_data)
    checkpoint = next((tmp_path / "run").glob("epoch-*"))
    assert load_checkpoint(checkpoint)["state"].epoch == 1  # ours: tensors and plain data, read safely
    marker = tmp_path / "pwned"
    torch.save({"model": model, "state": _Payload(marker)}, checkpoint / "state.pt")
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(checkpoint)
    assert not marker.exists()


def test_local_run_keeps_the_selected_epoch_across_a_resume(tmp_path):
    """The `best` checkpoint is the epoch model selection chose (the trainer's best_epoch, which a
    resume restores), not the first epoch a fresh reporter sees after a resume."""

    def checkpoint(epoch):
        directory = tmp_path / f"staging-{epoch}"
        directory.mkdir()
        (directory / "state.pt").write_text(str(epoch))
        return str(directory)

    first = LocalRun(tmp_path / "run", printer=None)
    first({"epoch": 0, "best_epoch": 0, "val_recall@1": 0.9}, checkpoint(0))
    first({"epoch": 1, "best_epoch": 0, "val_recall@1": 0.8}, checkpoint(1))
    resumed = LocalRun(tmp_path / "run", printer=None)  # a new process after an interruption
    resumed({"epoch": 2, "best_epoch": 0, "val_recall@1": 0.7}, checkpoint(2))
    assert (tmp_path / "run" / "checkpoints" / "best" / "state.pt").read_text() == "0"
    resumed({"epoch": 3, "best_epoch": 3, "val_recall@1": 0.95}, checkpoint(3))
    assert (tmp_path / "run" / "checkpoints" / "best" / "state.pt").read_text() == "3"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("epoch-*"))[-1] == "epoch-0003"
    assert resumed.latest_checkpoint() is None  # these stand-ins hold no tensors: none can be resumed from
