"""The two Faiss operations the project needs: k-means and exact nearest neighbours.

GPU indexes are used only where Faiss sees a GPU (`faiss-gpu` runs its CPU code paths on a
machine without one), so the same call works on a laptop and on a GPU node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import faiss
import numpy as np


def cpu_threads() -> int:
    """Faiss's OpenMP threads: $DNCML_FAISS_THREADS, else $OMP_NUM_THREADS (Ray sets it to a
    worker's CPUs), else all cores but one. Its threads spin while they wait for each other: on a
    2-core machine with anything else running (torch has its own thread pool), 2 Faiss threads
    made a 200k x 128 k-means 50x slower than 1 thread (measured: 53 s vs 1 s)."""
    for name in ("DNCML_FAISS_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(name, "").isdigit() and int(os.environ[name]) > 0:
            return int(os.environ[name])
    return max(1, (os.cpu_count() or 2) - 1)


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


def kmeans(
    x: np.ndarray, k: int, seed: int = 0, niter: int = 100, use_gpu: bool | None = None, max_points: int | None = None
) -> KMeansResult:
    """Faiss k-means over *all* points (the paper clusters the whole training set), every point
    assigned to its nearest centroid.

    Faiss silently subsamples to `max_points_per_centroid` (256) x k points, so the limit is
    raised above n; `max_points` (for sets larger than the paper's, say millions of images)
    trains the centroids on a seeded sample of that many points instead.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= n points, got k={k}, n={n}")
    if k == 1:
        centroid = x.mean(axis=0, keepdims=True)
        return KMeansResult(np.zeros(n, dtype=np.int64), centroid, float(((x - centroid) ** 2).sum()))
    gpu = num_gpus() > 0 if use_gpu is None else (use_gpu and num_gpus() > 0)
    faiss.omp_set_num_threads(cpu_threads())
    clustering = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=int(seed) % (2**31),
        gpu=bool(gpu),
        max_points_per_centroid=max(1, -(-max_points // k)) if max_points and max_points < n else max(256, n),
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
    faiss.omp_set_num_threads(cpu_threads())
    index = faiss.IndexFlatL2(gallery.shape[1])
    gpu = num_gpus() > 0 if use_gpu is None else (use_gpu and num_gpus() > 0)
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(gallery)
    distances, indices = index.search(query, k)
    return distances, indices.astype(np.int64)
