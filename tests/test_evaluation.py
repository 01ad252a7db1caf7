"""Recall@K, MAP@R and NMI against independent brute-force numpy versions, hand-made cases,
sklearn (NMI) and pytorch-metric-learning's AccuracyCalculator (precision@1, MAP@R)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

import dncml.trainers.evaluation as ev
from dncml.trainers.evaluation import (
    evaluate_embeddings,
    l2_normalize,
    map_at_r,
    nmi,
    nmi_from_assignments,
    recall_at_k,
)
from dncml.trainers.faiss_ops import kmeans

KS = (1, 2, 4, 8, 16, 1000)  # 1000 exceeds every candidate count here: clamped

# ----------------------------------------------------------------------------- brute force


def bf_distances(query, gallery):
    q = np.asarray(query, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    return ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)


def bf_ranking(query, query_labels, gallery=None, gallery_labels=None):
    """(order, relevance) with every candidate ranked, self excluded in the all-vs-all case."""
    if gallery is None:
        d = bf_distances(query, query)
        np.fill_diagonal(d, np.inf)
        order = np.argsort(d, axis=1, kind="stable")[:, :-1]  # self is last
        ref_labels = query_labels
    else:
        d = bf_distances(query, gallery)
        order = np.argsort(d, axis=1, kind="stable")
        ref_labels = gallery_labels
    rel = ref_labels[order] == query_labels[:, None]
    return d, order, rel


def bf_recall(query, query_labels, ks, gallery=None, gallery_labels=None):
    _, _, rel = bf_ranking(query, query_labels, gallery, gallery_labels)
    out = {}
    for k in ks:
        hits = [bool(row[: min(k, len(row))].any()) for row in rel]
        out[k] = sum(hits) / len(hits)
    return out


def bf_map_at_r(query, query_labels, gallery=None, gallery_labels=None):
    _, _, rel = bf_ranking(query, query_labels, gallery, gallery_labels)
    aps = []
    for row in rel:
        r = int(row.sum())  # all same-class candidates (self already excluded)
        if r == 0:
            continue
        total, correct = 0.0, 0
        for i in range(r):
            if row[i]:
                correct += 1
                total += correct / (i + 1)
        aps.append(total / r)
    return float(np.mean(aps)) if aps else float("nan")


def bf_entropy(items):
    n = len(items)
    return -sum(c / n * math.log(c / n) for c in Counter(items).values())


def bf_nmi(a, b):
    a, b = list(np.asarray(a).tolist()), list(np.asarray(b).tolist())
    ha, hb = bf_entropy(a), bf_entropy(b)
    if len(set(a)) == 1 and len(set(b)) == 1:
        return 1.0
    mi = ha + hb - bf_entropy(list(zip(a, b)))
    if mi <= 1e-15:
        return 0.0
    return 2 * mi / (ha + hb)


# ----------------------------------------------------------------------------- data


def _ties_free(query, query_labels, gallery, gallery_labels, eps=2e-5, depth=40):
    """No two candidates of different relevance are within eps of each other in the first
    `depth` ranks (where float32 Faiss and float64 numpy could order them differently)."""
    d, order, rel = bf_ranking(query, query_labels, gallery, gallery_labels)
    ds = np.take_along_axis(d, order, axis=1)[:, :depth]
    r = rel[:, :depth]
    close = np.diff(ds, axis=1) < eps
    differ = r[:, 1:] != r[:, :-1]
    return not (close & differ).any()


def _unit(x):
    return None if x is None else x / np.linalg.norm(x, axis=1, keepdims=True)


def make_set(seed, n=200, dim=16, classes=20, gallery=False, duplicates=10, singleton=False, normalized=False):
    """Clustered random embeddings with some exact duplicates (same label, so ties between them
    never change a metric); redrawn until ties-free in the sense of `_ties_free` (also after
    L2-normalisation when `normalized`)."""
    for attempt in range(100):
        rng = np.random.default_rng([seed, attempt])
        centres = rng.normal(size=(classes, dim))
        labels = rng.integers(0, classes, size=n)
        x = 0.6 * centres[labels] + rng.normal(size=(n, dim))
        src = rng.choice(n, size=duplicates, replace=False)
        dst = rng.choice(np.setdiff1d(np.arange(n), src), size=duplicates, replace=False)
        x[dst], labels[dst] = x[src], labels[src]
        if singleton:
            labels[0] = classes + 7  # a class with one item: R = 0, recall miss
        x = x.astype(np.float32)
        if gallery:
            nq = n * 3 // 5
            q, ql, g, gl = x[:nq], labels[:nq], x[nq:], labels[nq:]
            # a query also present in the gallery (distance 0, same label) and a gallery duplicate
            g = np.concatenate([g, q[:3], g[:2]])
            gl = np.concatenate([gl, ql[:3], gl[:2]])
        else:
            q, ql, g, gl = x, labels, None, None
        if _ties_free(q, ql, g, gl) and (not normalized or _ties_free(_unit(q), ql, _unit(g), gl)):
            return q, ql, g, gl
    raise RuntimeError("could not draw a ties-free set")


CASES = [(seed, gallery, singleton) for seed in (0, 1, 2) for gallery in (False, True) for singleton in (False, True)]


# ----------------------------------------------------------------------------- vs brute force


@pytest.mark.parametrize("seed,gallery,singleton", CASES)
def test_recall_matches_brute_force(seed, gallery, singleton):
    q, ql, g, gl = make_set(seed, gallery=gallery, singleton=singleton)
    got = recall_at_k(q, ql, KS, g, gl)
    want = bf_recall(q, ql, KS, g, gl)
    assert list(got) == list(KS)
    for k in KS:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
    assert 0.0 < got[1] < 1.0  # the set is neither trivial nor hopeless
    assert got[1000] == want[1000]


@pytest.mark.parametrize("seed,gallery,singleton", CASES)
def test_map_at_r_matches_brute_force(seed, gallery, singleton):
    q, ql, g, gl = make_set(seed, gallery=gallery, singleton=singleton)
    got = map_at_r(q, ql, g, gl)
    assert got == pytest.approx(bf_map_at_r(q, ql, g, gl), abs=1e-12)
    assert 0.0 < got < 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmi_matches_brute_force(seed):
    q, ql, _, _ = make_set(seed)
    k = len(np.unique(ql))
    assignment = kmeans(q, k, seed=seed).assignment
    got = nmi(q, ql, seed=seed)
    assert got == pytest.approx(bf_nmi(ql, assignment), abs=1e-12)
    assert got == nmi(q, ql, seed=seed)  # deterministic for a seed
    assert 0.0 < got < 1.0


@pytest.mark.parametrize("seed,gallery", [(0, False), (1, True)])
def test_evaluate_embeddings_matches_brute_force_on_normalised(seed, gallery):
    q, ql, g, gl = make_set(seed, gallery=gallery, normalized=True)
    out = evaluate_embeddings(q * 3.0, ql, (1, 4), None if g is None else g * 0.5, gl, seed=5, prefix="test/")
    assert set(out) == {"test/recall@1", "test/recall@4", "test/nmi", "test/map@r"}
    qn, gn = _unit(q), _unit(g)
    want = bf_recall(qn, ql, (1, 4), gn, gl)
    assert out["test/recall@1"] == pytest.approx(want[1], abs=1e-12)
    assert out["test/recall@4"] == pytest.approx(want[4], abs=1e-12)
    assert out["test/map@r"] == pytest.approx(bf_map_at_r(qn, ql, gn, gl), abs=1e-12)
    all_x = qn if g is None else np.concatenate([qn, gn])
    all_l = ql if g is None else np.concatenate([ql, gl])
    assert out["test/nmi"] == pytest.approx(nmi(all_x, all_l, seed=5), abs=1e-6)
    assert all(isinstance(v, float) for v in out.values())


# ----------------------------------------------------------------------------- hand-made


def separated_clusters(classes=4, per_class=10, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    centres = 10.0 * np.eye(classes, dtype=np.float32)
    x = centres[labels] + noise * rng.normal(size=(len(labels), classes))
    return x.astype(np.float32), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perfectly_separated_clusters(seed):
    x, y = separated_clusters(seed=seed)
    assert recall_at_k(x, y, (1, 2, 4)) == {1: 1.0, 2: 1.0, 4: 1.0}
    assert map_at_r(x, y) == 1.0
    assert nmi(x, y, seed=seed) == pytest.approx(1.0)
    out = evaluate_embeddings(x, y, (1,), seed=seed)
    assert out == pytest.approx({"recall@1": 1.0, "nmi": 1.0, "map@r": 1.0})
    # a gallery of the same clusters
    g, gy = separated_clusters(seed=seed + 100)
    assert recall_at_k(x, y, (1,), g, gy) == {1: 1.0}
    assert map_at_r(x, y, g, gy) == 1.0


def test_recall_half_with_singletons_and_clamping():
    x = np.array([[0.0], [1.0], [10.0], [11.0]], dtype=np.float32)
    y = np.array([0, 1, 2, 2])
    # 0 and 1 are singletons (always missed), 10 <-> 11 hit; K = 5 is clamped to 3 candidates
    assert recall_at_k(x, y, (1, 2, 3, 5)) == {1: 0.5, 2: 0.5, 3: 0.5, 5: 0.5}
    assert map_at_r(x, y) == 1.0  # the singletons have R = 0 and are skipped


def test_map_at_r_hand_value():
    x = np.array([[0.0], [1.0], [2.5], [10.0]], dtype=np.float32)
    y = np.array([0, 1, 0, 0])
    # 0: [1 miss, 2.5 hit] -> 1/4; 2.5: [1 miss, 0 hit] -> 1/4; 10: [2.5 hit, 1 miss] -> 1/2
    assert map_at_r(x, y) == pytest.approx(1.0 / 3.0)
    # the same against a gallery: query 0.0 (class 0) vs gallery 1 (class 1), 2.5, 10 (class 0)
    assert map_at_r(x[:1], y[:1], x[1:], y[1:]) == pytest.approx(0.25)
    assert recall_at_k(x[:1], y[:1], (1, 2), x[1:], y[1:]) == {1: 0.0, 2: 1.0}


def test_map_at_r_all_skipped_is_nan():
    x = np.array([[0.0], [1.0]], dtype=np.float32)
    assert math.isnan(map_at_r(x, np.array([0, 1])))
    assert math.isnan(map_at_r(x, np.array([0, 1]), x, np.array([2, 3])))


def test_exact_duplicates_self_excluded_by_index():
    # points 0 and 1 coincide but have different (singleton) classes: neither may count itself
    x = np.array([[0.0], [0.0], [5.0], [6.0]], dtype=np.float32)
    y = np.array([0, 1, 2, 2])
    assert recall_at_k(x, y, (1, 2)) == {1: 0.5, 2: 0.5}
    assert map_at_r(x, y) == 1.0


def test_self_exclusion_wherever_faiss_puts_self(monkeypatch):
    """Self at position 1 (duplicate ranked first) and self missing from the k + 1 results."""
    x = np.zeros((4, 2), dtype=np.float32)
    y = np.array([0, 1, 1, 2])

    def fake_knn(query, gallery, k, use_gpu=None):
        assert k == 2
        idx = np.array([[1, 0], [0, 1], [0, 1], [0, 1]])  # row 2 and 3: self absent
        return np.zeros(idx.shape, dtype=np.float32), idx

    monkeypatch.setattr(ev, "knn", fake_knn)
    # 0 -> [1] miss (self dropped from position 1); 1 -> [0] miss; 2 -> [0] miss (last dropped);
    # 3 -> [0] miss
    assert recall_at_k(x, y, (1,)) == {1: 0.0}

    def fake_knn2(query, gallery, k, use_gpu=None):
        idx = np.array([[1, 0], [2, 1], [0, 1], [1, 0]])
        return np.zeros(idx.shape, dtype=np.float32), idx

    monkeypatch.setattr(ev, "knn", fake_knn2)
    # 0 -> [1] miss; 1 -> [2] hit; 2 -> [0] miss ([0, 1] holds no 2: last dropped); 3 -> [1] miss
    assert recall_at_k(x, y, (1,)) == {1: 0.25}


def test_l2_normalize_leaves_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out = l2_normalize(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    # a zero row still evaluates (it sits at distance 1 from every unit vector); row 1's nearest
    # is the zero row before normalising and row 0 after
    x = np.array([[10.0, 0.0], [0.9, 0.1], [0.0, 0.0]], dtype=np.float32)
    y = np.array([0, 0, 1])
    assert recall_at_k(x, y, (1,)) == {1: pytest.approx(1 / 3)}
    assert evaluate_embeddings(x, y, (1,))["recall@1"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- NMI


def test_nmi_from_assignments_hand_values():
    assert nmi_from_assignments([0, 0, 1, 1], [5, 5, 9, 9]) == pytest.approx(1.0)
    assert nmi_from_assignments([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0
    assert nmi_from_assignments([3, 3, 3], [1, 1, 1]) == 1.0
    assert nmi_from_assignments([0, 1, 2], [0, 0, 0]) == 0.0
    assert nmi_from_assignments(["a", "a", "b"], [0, 0, 1]) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_nmi_from_assignments_matches_sklearn(seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 7, size=300) * 13 - 40  # non-contiguous, negative ids
    b = np.where(rng.random(300) < 0.6, a, rng.integers(0, 9, size=300))
    want = sklearn_metrics.normalized_mutual_info_score(a, b, average_method="arithmetic")
    assert nmi_from_assignments(a, b) == pytest.approx(want, abs=1e-12)
    assert nmi_from_assignments(a, b) == pytest.approx(bf_nmi(a, b), abs=1e-12)
    assert nmi_from_assignments(b, a) == pytest.approx(want, abs=1e-12)


def test_nmi_from_assignments_edge_cases_match_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    for a, b in [([1, 1, 1], [2, 2, 2]), ([0, 1, 2], [0, 0, 0]), ([0], [0]), ([0, 0, 1, 1], [0, 1, 0, 1])]:
        assert nmi_from_assignments(a, b) == pytest.approx(sklearn_metrics.normalized_mutual_info_score(a, b))


# ----------------------------------------------------------------------------- pytorch-metric-learning


@pytest.mark.parametrize("gallery", [False, True])
def test_agrees_with_pytorch_metric_learning(gallery):
    torch = pytest.importorskip("torch")
    acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    q, ql, g, gl = make_set(3, gallery=gallery, duplicates=0)
    if gallery:  # PML's precision@1 leaves out queries whose class is not in the reference set
        keep = np.isin(ql, gl)
        q, ql = q[keep], ql[keep]
    calc = acc.AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count", device=torch.device("cpu"))
    if gallery:
        res = calc.get_accuracy(
            torch.from_numpy(q), torch.from_numpy(ql), torch.from_numpy(g), torch.from_numpy(gl), ref_includes_query=False
        )
    else:
        res = calc.get_accuracy(torch.from_numpy(q), torch.from_numpy(ql))  # reference = query, self excluded
    assert recall_at_k(q, ql, (1,), g, gl)[1] == pytest.approx(res["precision_at_1"], abs=1e-9)
    assert map_at_r(q, ql, g, gl) == pytest.approx(res["mean_average_precision_at_r"], abs=1e-9)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises():
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="labels"):
        recall_at_k(x, y[:5], (1,))
    with pytest.raises(ValueError, match="empty"):
        recall_at_k(x[:0], y[:0], (1,))
    with pytest.raises(ValueError, match=">= 1"):
        recall_at_k(x, y, (0,))
    with pytest.raises(ValueError, match="at least one"):
        recall_at_k(x, y, ())
    with pytest.raises(ValueError, match="integer"):
        recall_at_k(x, y, (1.5,))
    with pytest.raises(ValueError, match="both gallery"):
        recall_at_k(x, y, (1,), gallery=x)
    with pytest.raises(ValueError, match="dimension"):
        recall_at_k(x, y, (1,), x[:, :2], y)
    with pytest.raises(ValueError, match="gallery"):
        map_at_r(x, y, x[:3], y)
    with pytest.raises(ValueError, match="empty"):
        map_at_r(x, y, x[:0], y[:0])
    with pytest.raises(ValueError, match="at least 2"):
        map_at_r(x[:1], y[:1])
    with pytest.raises(ValueError, match="2-D"):
        recall_at_k(x[:, 0], y, (1,))
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_embeddings(bad, y, (1,))
    with pytest.raises(ValueError, match=">= 1"):
        evaluate_embeddings(x, y, (1, -2))
    with pytest.raises(ValueError, match="labels"):
        nmi(x, y[:4])
    with pytest.raises(ValueError, match="lengths"):
        nmi_from_assignments([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        nmi_from_assignments([], [])
