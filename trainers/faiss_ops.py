"""The two Faiss operations the project needs: k-means and exact nearest neighbours.

GPU indexes are used only where Faiss sees a GPU (`faiss-gpu` runs its CPU code paths on a
machine without one), so the same call works on a laptop and on a GPU node.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np


def num_gpus() -> int:
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # a CPU-only Faiss build has no GPU module at all
        return 0


@dataclass
class KMeansResult:
    assignment: np.ndarray  # int64 (n,): cluster id of each point
    centroids: np.ndarray  # float32 (k, d)
    objective: float  # final sum of squared distances to the assigned centroid


def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 100, use_gpu: bool | None = None) -> KMeansResult:
    """Faiss k-means over *all* points.

    Faiss silently subsamples to `max_points_per_centroid` (256) x k points; the paper clusters the
    whole training set, so the limit is raised above n.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= n points, got k={k}, n={n}")
    if k == 1:
        centroid = x.mean(axis=0, keepdims=True)
        return KMeansResult(np.zeros(n, dtype=np.int64), centroid, float(((x - centroid) ** 2).sum()))
    gpu = num_gpus() > 0 if use_gpu is None else (use_gpu and num_gpus() > 0)
    clustering = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=int(seed) % (2**31),
        gpu=bool(gpu),
        max_points_per_centroid=max(256, n),
        min_points_per_centroid=1,
        verbose=False,
    )
    clustering.train(x)
    _, labels = clustering.index.search(x, 1)
    objective = float(clustering.obj[-1]) if len(clustering.obj) else float("nan")
    return KMeansResult(labels[:, 0].astype(np.int64), np.asarray(clustering.centroids), objective)


def knn(query: np.ndarray, gallery: np.ndarray, k: int, use_gpu: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by squared L2 distance: (distances, indices), each (nq, k)."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    k = min(k, len(gallery))
    index = faiss.IndexFlatL2(gallery.shape[1])
    gpu = num_gpus() > 0 if use_gpu is None else (use_gpu and num_gpus() > 0)
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(gallery)
    distances, indices = index.search(query, k)
    return distances, indices.astype(np.int64)
