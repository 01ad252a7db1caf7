"""Retrieval and clustering metrics on embeddings: Recall@K, NMI and MAP@R.

Pure numpy + Faiss; the caller embeds the images and passes arrays (n, d) and labels (n,).

Two evaluation modes, as in `EvalSet`:

* gallery None ("all-vs-all": CUB, Cars, SOP, VehicleID): every query retrieves among all the
  other queries, itself excluded. The query is excluded by *index identity*, not by dropping the
  first neighbour, so an exact duplicate of the query that Faiss happens to rank first is kept.
* gallery given (In-shop): queries retrieve from the gallery; nothing is excluded.

Conventions:

* Distances are squared L2 (`faiss_ops.knn`). `evaluate_embeddings` L2-normalises first, so the
  ranking equals the cosine-similarity ranking; the individual metric functions use the arrays
  as given.
* Recall@K counts every query, including queries whose class has no other item among the
  candidates (they are misses). A K larger than the number of candidates (n - 1 all-vs-all,
  the gallery size otherwise) is clamped to that number; the result is still reported under
  the requested K.
* MAP@R skips queries with R = 0 (no same-class candidate); if every query has R = 0 it is NaN.
* NMI uses the arithmetic normalisation 2 I(Omega; C) / (H(Omega) + H(C)) (sklearn's
  `normalized_mutual_info_score` default); two one-cluster labelings give 1.0, as in sklearn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dncml.trainers.faiss_ops import kmeans, knn
from dncml.trainers.metric_keys import map_at_r_key, nmi_key, recall_key

# Faiss GPU brute-force search supports k <= 2048; larger searches run on the CPU index.
_GPU_MAX_K = 2048

__all__ = [
    "recall_at_k",
    "nmi",
    "nmi_from_assignments",
    "map_at_r",
    "evaluate_embeddings",
    "l2_normalize",
]


# ----------------------------------------------------------------------------- validation


def _check_embeddings(x: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    labels = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"{what} embeddings must be a 2-D array (n, d), got shape {x.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{what} labels must be a 1-D array (n,), got shape {labels.shape}")
    if len(x) != len(labels):
        raise ValueError(f"{what}: {len(x)} embeddings but {len(labels)} labels")
    if len(x) == 0:
        raise ValueError(f"{what} set is empty")
    if x.shape[1] == 0:
        raise ValueError(f"{what} embeddings have dimension 0")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} embeddings contain NaN or infinite values")
    return x, labels


def _check_inputs(query, query_labels, gallery, gallery_labels):
    query, query_labels = _check_embeddings(query, query_labels, "query")
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("give both gallery and gallery_labels, or neither")
    if gallery is None:
        if len(query) < 2:
            raise ValueError("all-vs-all retrieval needs at least 2 query items (the query itself is excluded)")
        return query, query_labels, None, None
    gallery, gallery_labels = _check_embeddings(gallery, gallery_labels, "gallery")
    if gallery.shape[1] != query.shape[1]:
        raise ValueError(f"query dimension {query.shape[1]} != gallery dimension {gallery.shape[1]}")
    return query, query_labels, gallery, gallery_labels


def _check_ks(ks: Sequence[int]) -> list[int]:
    if isinstance(ks, (int, np.integer)):
        ks = [ks]
    ks = list(ks)
    if not ks:
        raise ValueError("ks must hold at least one K")
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"every K must be an integer, got {k!r}")
        if k < 1:
            raise ValueError(f"every K must be >= 1, got {k}")
        if int(k) not in out:
            out.append(int(k))
    return out


# ----------------------------------------------------------------------------- neighbours


def _neighbours(query: np.ndarray, gallery: np.ndarray | None, k: int) -> np.ndarray:
    """Indices (nq, k') of the k nearest candidates; k' = min(k, number of candidates).

    gallery None: the candidates are the other queries. k + 1 neighbours are searched and the
    query's own index removed from its row wherever it appears; where it does not appear (more
    than k exact duplicates tie at distance 0) the last neighbour is dropped instead.
    """
    if gallery is None:
        n = len(query)
        k = min(k, n - 1)
        search = k + 1
        _, idx = knn(query, query, search, use_gpu=None if search <= _GPU_MAX_K else False)
        is_self = idx == np.arange(n)[:, None]
        drop = is_self.copy()
        no_self = ~is_self.any(axis=1)
        drop[no_self, -1] = True
        # exactly one column dropped per row (Faiss returns each index at most once per row)
        return idx[~drop].reshape(n, k)
    k = min(k, len(gallery))
    _, idx = knn(query, gallery, k, use_gpu=None if k <= _GPU_MAX_K else False)
    return idx


# ----------------------------------------------------------------------------- metrics


def recall_at_k(
    query: np.ndarray,
    query_labels: np.ndarray,
    ks: Sequence[int],
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
) -> dict[int, float]:
    """Recall@K for each K in ks: fraction of queries with a same-class item among the K nearest.

    gallery None: each query searches all other queries (itself excluded by index).
    K above the number of candidates is clamped to it (reported under the requested K).
    """
    query, query_labels, gallery, gallery_labels = _check_inputs(query, query_labels, gallery, gallery_labels)
    ks = _check_ks(ks)
    ref_labels = query_labels if gallery is None else gallery_labels
    idx = _neighbours(query, gallery, max(ks))
    hits = ref_labels[idx] == query_labels[:, None]  # (nq, k')
    # rank (1-based) of the first same-class neighbour; int64 max where there is none
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.iinfo(np.int64).max)
    return {k: float(np.mean(first_hit <= k)) for k in ks}


def map_at_r(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
) -> float:
    """MAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020).

    For each query, R = number of same-class candidates (all-vs-all: the class count minus the
    query itself); AP@R = (1/R) sum_{i<=R} P(i) rel(i) over the R nearest candidates. Queries with
    R = 0 are skipped; NaN if all are. One Faiss search with k = max R.
    """
    query, query_labels, gallery, gallery_labels = _check_inputs(query, query_labels, gallery, gallery_labels)
    ref_labels = query_labels if gallery is None else gallery_labels
    uniq, ref_counts = np.unique(ref_labels, return_counts=True)
    pos = np.searchsorted(uniq, query_labels)
    pos_c = np.minimum(pos, len(uniq) - 1)
    found = uniq[pos_c] == query_labels
    r = np.where(found, ref_counts[pos_c], 0).astype(np.int64)
    if gallery is None:
        r -= 1
    keep = r > 0
    if not keep.any():
        return float("nan")
    # all-vs-all: every query stays a candidate for the others, so search with the full set
    # (self-exclusion is by index into it) and drop the R = 0 rows afterwards
    idx = _neighbours(query, gallery, int(r[keep].max()))[keep]
    rel = ref_labels[idx] == query_labels[keep][:, None]
    return _ap_at_r(rel, r[keep])


def _ap_at_r(rel: np.ndarray, r: np.ndarray) -> float:
    """Mean over rows of (1/R) sum_{i<=R} P(i) rel(i); rel is (nq, >= max R) booleans."""
    cols = np.arange(1, rel.shape[1] + 1)
    within = cols[None, :] <= r[:, None]
    rel = rel & within
    precision = np.cumsum(rel, axis=1) / cols[None, :]
    ap = (precision * rel).sum(axis=1) / r
    return float(ap.mean())


def nmi_from_assignments(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information of two labelings of the same items (any hashable labels).

    NMI = 2 I(A; B) / (H(A) + H(B)), from the contingency table; natural logs (the ratio does not
    depend on the base). Equal to sklearn's normalized_mutual_info_score(a, b) with
    average_method="arithmetic", including its limit cases: 1.0 when both labelings have a single
    cluster, 0.0 when the mutual information is 0.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"labelings must be 1-D, got shapes {a.shape} and {b.shape}")
    if len(a) != len(b):
        raise ValueError(f"labelings have different lengths: {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError("labelings are empty")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    ia, ib = ia.ravel(), ib.ravel()
    na, nb = int(ia.max()) + 1, int(ib.max()) + 1
    if na == nb == 1:
        return 1.0
    n = float(len(a))
    table = np.zeros((na, nb), dtype=np.float64)
    np.add.at(table, (ia, ib), 1.0)
    pa = table.sum(axis=1) / n
    pb = table.sum(axis=0) / n
    nz = table > 0
    pab = table[nz] / n
    outer = (pa[:, None] * pb[None, :])[nz]
    mi = float(np.sum(pab * (np.log(pab) - np.log(outer))))
    mi = max(mi, 0.0)
    if mi <= 0.0:
        return 0.0
    ha = float(-np.sum(pa * np.log(pa)))
    hb = float(-np.sum(pb * np.log(pb)))
    return float(min(2.0 * mi / (ha + hb), 1.0))


def nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0, iterations: int = 20) -> float:
    """NMI between the labels and a Faiss k-means clustering (k = number of distinct labels).
    20 iterations (Faiss's default) rather than the training-time 100: with k in the thousands
    the evaluation would otherwise cost more than an epoch."""
    embeddings, labels = _check_embeddings(embeddings, labels, "NMI")
    num_clusters = int(len(np.unique(labels)))
    clusters = kmeans(embeddings, num_clusters, seed=seed, niter=iterations).assignment
    return nmi_from_assignments(labels, clusters)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (float32); zero-norm rows are left as they are."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0).astype(np.float32))


def evaluate_embeddings(
    query: np.ndarray,
    query_labels: np.ndarray,
    ks: Sequence[int],
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    seed: int = 0,
    prefix: str = "",
) -> dict[str, float]:
    """All metrics of one evaluation set on L2-normalised embeddings.

    Returns {f"{prefix}recall@{k}" for k in ks, f"{prefix}nmi", f"{prefix}map@r"} (the keys of
    `metric_keys.eval_set_keys`; prefix: `metric_keys.set_prefix(eval set name)`). NMI clusters
    query and gallery together (k = number of distinct labels in both).
    """
    query, query_labels, gallery, gallery_labels = _check_inputs(query, query_labels, gallery, gallery_labels)
    ks = _check_ks(ks)
    query = l2_normalize(query)
    if gallery is not None:
        gallery = l2_normalize(gallery)
    out = {recall_key(k, prefix): v for k, v in recall_at_k(query, query_labels, ks, gallery, gallery_labels).items()}
    if gallery is None:
        all_x, all_labels = query, query_labels
    else:
        all_x = np.concatenate([query, gallery])
        all_labels = np.concatenate([query_labels, gallery_labels])
    out[nmi_key(prefix)] = nmi(all_x, all_labels, seed=seed)
    out[map_at_r_key(prefix)] = map_at_r(query, query_labels, gallery, gallery_labels)
    return out
