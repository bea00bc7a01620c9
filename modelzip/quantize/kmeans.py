"""k-means weight sharing (Deep Compression §3): cluster a layer's weights into a small codebook.

The paper compares three ways to place the initial centroids and finds linear the best: it keeps
centroids on the few large weights, which matter most yet are rare, where density-based or random
(Forgy) starts crowd the centroids into the peak around zero.

Weights are scalars, so the clustering is 1-D and needs no general k-means: after one sort, each
cluster is a run of sorted values and Lloyd's iteration costs k binary searches (`lloyd_1d`); a
small problem is solved exactly by dynamic programming (`optimal_1d`).
"""
from __future__ import annotations

from enum import Enum

import numpy as np
import torch

from ..errors import ConfigError

EXACT_WORK = 1 << 24  # distinct values^2 x k below which the exact dynamic program is cheap (~0.1 s)


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

    k' < k when there are fewer distinct weights than k, or a cluster empties during Lloyd's
    iteration. Centroids come out sorted ascending; each weight goes to its nearest centroid. Small
    problems are solved exactly (`optimal_1d`), the rest by `lloyd_1d` from `init`.
    """
    if k < 1:
        raise ConfigError(f"a codebook needs k >= 1 centroids, got {k}")
    w = weights.detach().cpu().float().numpy().reshape(-1)
    if w.size == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    exact = w.size ** 2 * k <= EXACT_WORK
    centroids = optimal_1d(w, k) if exact else lloyd_1d(w, k, init=init, seed=seed)
    return torch.from_numpy(centroids).float(), torch.from_numpy(nearest(w, centroids)).long()


def nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each value's nearest sorted centroid (a tie at a midpoint goes to the upper one)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    if values.dtype.kind == "f":  # in the values' own dtype, or numpy converts every value to float64
        midpoints = midpoints.astype(values.dtype)
    return np.searchsorted(midpoints, values, side="right")


def lloyd_1d(values: np.ndarray, k: int, weights: np.ndarray | None = None, *, init: Init | str = Init.LINEAR,
             iterations: int = 3000, seed: int = 0) -> np.ndarray:
    """Weighted 1-D k-means by Lloyd's iteration on sorted values: sorted centroids (empty clusters dropped).

    In one dimension each cluster is a run of the sorted values between the midpoints of neighbouring
    centroids, so an iteration is k binary searches and k differences of prefix sums: O(k log n), after
    one sort. `weights` (>= 0, one per value) make the within-cluster error sum_i weight_i (x_i - c)^2,
    e.g. a Hessian diagonal, so that the weights that matter most are reproduced best.
    """
    x = np.asarray(values).reshape(-1)
    if x.size == 0:
        return np.zeros(0)
    if weights is None:  # a plain sort in the values' own dtype: half the memory of float64 for fp32
        x = np.sort(x)
        w = None
    else:
        order = np.argsort(x, kind="stable")
        x = x[order]
        w = np.asarray(weights, dtype=np.float64).reshape(-1)[order]
    sums = _Sums(x, w)
    centroids = _start(x, k, init, seed)
    k = centroids.size
    for _ in range(iterations):
        # midpoints in the values' dtype: searching float64 keys would convert all of x each time
        edges = np.searchsorted(x, ((centroids[1:] + centroids[:-1]) / 2).astype(x.dtype))
        lo, hi = np.concatenate([[0], edges]), np.concatenate([edges, [x.size]])
        mass = sums.mass(lo, hi)
        filled = mass > 0
        lo, hi, new = lo[filled], hi[filled], sums.moment(lo, hi)[filled] / mass[filled]
        while new.size < k:  # an emptied cluster: bisect the one of largest error instead
            lo, hi, new = _bisect_worst(x, sums, lo, hi, new)
        if np.array_equal(new, centroids):
            break
        centroids = new
    return centroids


class _Sums:
    """Prefix sums of w, w x and (only if asked) w x^2 over the sorted values, w = 1 if None, so the
    mass, first and second moments of any run [lo, hi) are differences."""

    def __init__(self, x: np.ndarray, w: np.ndarray | None) -> None:
        self.x, self.w = x, w
        self.moments = np.zeros(x.size + 1)
        self.moments[1:] = x if w is None else w * x
        np.cumsum(self.moments, out=self.moments)  # in place: converting inside cumsum is 2x slower
        self.masses = None if w is None else np.concatenate([[0.0], np.cumsum(w)])
        self.squares: np.ndarray | None = None

    def mass(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return (hi - lo).astype(np.float64) if self.masses is None else self.masses[hi] - self.masses[lo]

    def moment(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return self.moments[hi] - self.moments[lo]

    def error(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Within-run squared error of each run (the x^2 sums are built the first time)."""
        if self.squares is None:
            x = self.x.astype(np.float64)
            self.squares = np.concatenate([[0.0], np.cumsum(x * x if self.w is None else self.w * x * x)])
        return self.squares[hi] - self.squares[lo] - self.moment(lo, hi) ** 2 / self.mass(lo, hi)


def _bisect_worst(x: np.ndarray, sums: _Sums, lo: np.ndarray, hi: np.ndarray,
                  means: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split the run of largest squared error at its mean into two runs (each keeps >= 1 value:
    a run with error holds two distinct values, and its mean lies strictly between them)."""
    worst = int(np.argmax(sums.error(lo, hi)))
    a, b = int(lo[worst]), int(hi[worst])
    cut = a + int(np.searchsorted(x[a:b], means[worst]))
    halves = np.array([a, cut]), np.array([cut, b])
    return (np.insert(lo, worst + 1, cut), np.insert(hi, worst, cut),
            np.concatenate([means[:worst], sums.moment(*halves) / sums.mass(*halves), means[worst + 1:]]))


def _start(ordered: np.ndarray, k: int, init: Init | str, seed: int) -> np.ndarray:
    """Distinct starting centroids of sorted values: min(k, distinct values) of them, from `init`,
    or Forgy's when `init` ties (density on heavily tied weights)."""
    distinct = ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])]
    k = min(k, distinct.size)
    start = np.unique(initial_centroids(ordered, k, init, seed))
    if start.size < k:
        start = np.sort(initial_centroids(distinct, k, Init.RANDOM, seed)).astype(np.float64)
    return start


def optimal_1d(values: np.ndarray, k: int, weights: np.ndarray | None = None) -> np.ndarray:
    """The k centroids of least (weighted) within-cluster squared error, exactly: sorted, ascending.

    Optimal clusters are runs of the sorted distinct values, so a dynamic program over run ends
    (Bellman 1973; Wang & Song 2011's Ckmeans.1d.dp) finds them in O(k m^2) for m distinct values:
    for small inputs, and as the yardstick Lloyd's iteration is tested against.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return np.zeros(0)
    distinct, inverse = np.unique(x, return_inverse=True)
    mass = np.bincount(inverse.reshape(-1), weights=w)  # (m,)
    k = min(k, distinct.size)
    s0, s1, s2 = (np.concatenate([[0.0], np.cumsum(mass * distinct ** p)]) for p in range(3))
    lo, hi = np.triu_indices(distinct.size + 1, 1)  # every run [lo, hi) of distinct values
    cost = np.full((distinct.size + 1,) * 2, np.inf)  # (m+1, m+1): error of run [i, j)
    with np.errstate(invalid="ignore", divide="ignore"):
        run = s2[hi] - s2[lo] - (s1[hi] - s1[lo]) ** 2 / (s0[hi] - s0[lo])
    cost[lo, hi] = np.where(s0[hi] > s0[lo], np.maximum(run, 0.0), 0.0)
    best = cost[0]  # (m+1,): least error of the first j values in one cluster
    splits = []
    for _ in range(k - 1):  # one more cluster: its run [i, j) follows the best i values in fewer
        total = best[:, None] + cost  # (m+1, m+1)
        splits.append(np.argmin(total, axis=0))
        best = total[splits[-1], np.arange(distinct.size + 1)]
    ends = [distinct.size]  # run ends, last first: each split points at the start of the run ending there
    for split in reversed(splits):
        ends.append(int(split[ends[-1]]))
    bounds = [0, *ends[::-1]]  # [0, e1, ..., m]
    runs = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if s0[b] > s0[a]]
    return np.array([(s1[b] - s1[a]) / (s0[b] - s0[a]) for a, b in runs])
