"""k-means weight sharing (Deep Compression §3): cluster a layer's weights into a small codebook.

The paper compares three ways to place the initial centroids and finds linear the best: it keeps
centroids on the few large weights, which matter most yet are rare, where density-based or random
(Forgy) starts crowd the centroids into the peak around zero.
"""
from __future__ import annotations

from enum import Enum

import numpy as np
import torch
from sklearn.cluster import KMeans

from ..errors import ConfigError


class Init(str, Enum):
    LINEAR = "linear"  # evenly spaced between min and max weight (the paper's best)
    DENSITY = "density"  # evenly spaced on the weights' CDF (quantiles)
    RANDOM = "random"  # k distinct weights picked at random (Forgy)


def initial_centroids(weights: np.ndarray, k: int, init: Init | str, seed: int = 0) -> np.ndarray:
    """The k starting centroids of `weights` (1-D) for an initialisation method."""
    init = Init(init)
    if init is Init.LINEAR:
        return np.linspace(weights.min(), weights.max(), k)
    if init is Init.DENSITY:
        return np.quantile(weights, (np.arange(k) + 0.5) / k)
    distinct = np.unique(weights)
    return np.random.default_rng(seed).choice(distinct, k, replace=False)


def kmeans_codebook(weights: torch.Tensor, k: int, init: Init | str = Init.LINEAR, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the 1-D `weights` into at most `k` centroids: (centroids (k',), assignment (n,)).

    k' < k only when there are fewer distinct weights than k. Centroids come out sorted ascending.
    """
    if k < 1:
        raise ConfigError(f"a codebook needs k >= 1 centroids, got {k}")
    w = weights.detach().double().cpu().numpy().reshape(-1)
    if w.size == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    k = min(k, np.unique(w).size)
    start = initial_centroids(w, k, init, seed)
    if np.unique(start).size < k:  # e.g. density init on heavily tied weights: fall back to Forgy
        start = initial_centroids(w, k, Init.RANDOM, seed)
    km = KMeans(n_clusters=k, init=start.reshape(-1, 1), n_init=1, random_state=seed).fit(w.reshape(-1, 1))
    order = np.argsort(km.cluster_centers_.reshape(-1))
    rank = np.empty_like(order)
    rank[order] = np.arange(k)
    centroids = torch.from_numpy(km.cluster_centers_.reshape(-1)[order]).float()
    return centroids, torch.from_numpy(rank[km.labels_]).long()


def lloyd_1d(values: np.ndarray, k: int, weights: np.ndarray | None = None, *, init: Init | str = Init.LINEAR,
             iterations: int = 100, seed: int = 0) -> np.ndarray:
    """Weighted 1-D k-means by Lloyd's iteration on sorted values: sorted centroids (empty clusters dropped).

    In one dimension each cluster is a run of the sorted values between the midpoints of neighbouring
    centroids, so an iteration is k binary searches and k differences of prefix sums: O(k log n), after
    one sort. `weights` (>= 0, one per value) make the within-cluster error sum_i weight_i (x_i - c)^2,
    e.g. a Hessian diagonal, so that the weights that matter most are reproduced best.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return np.zeros(0)
    order = np.argsort(x, kind="stable")
    x = x[order]
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)[order]
    mass, moment = np.concatenate([[0.0], np.cumsum(w)]), np.concatenate([[0.0], np.cumsum(w * x)])
    centroids = np.unique(initial_centroids(x, min(k, np.unique(x).size), init, seed))
    for _ in range(iterations):
        edges = np.searchsorted(x, (centroids[1:] + centroids[:-1]) / 2)
        lo, hi = np.concatenate([[0], edges]), np.concatenate([edges, [x.size]])
        total = mass[hi] - mass[lo]
        filled = total > 0
        new = (moment[hi] - moment[lo])[filled] / total[filled]
        if new.size == centroids.size and np.array_equal(new, centroids):
            break
        centroids = new
    return centroids
