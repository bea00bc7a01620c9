"""1-D k-means: the exact dynamic program against brute force, Lloyd's iteration against the optimum."""

import itertools

import numpy as np
import pytest
import torch

from modelzip.quantize import kmeans_codebook, lloyd_1d, optimal_1d
from modelzip.quantize.kmeans import nearest


def error(x: np.ndarray, centroids: np.ndarray, w: np.ndarray | None = None) -> float:
    w = np.ones_like(x) if w is None else w
    return float((w * (x - centroids[nearest(x, centroids)]) ** 2).sum())


def brute_force(x: np.ndarray, k: int, w: np.ndarray) -> float:
    """Least error over every split of the sorted distinct values into k runs."""
    distinct = np.unique(x)
    best = np.inf
    for cuts in itertools.combinations(range(1, distinct.size), min(k, distinct.size) - 1):
        bounds = [0, *cuts, distinct.size]
        centroids = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            member = (x >= distinct[a]) & (x <= distinct[b - 1])
            centroids.append((x[member] * w[member]).sum() / w[member].sum())
        best = min(best, error(x, np.array(centroids), w))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_optimal_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=int(rng.integers(1, 11))).round(1)  # ties included
    k, w = int(rng.integers(1, 5)), rng.random(x.size) + 0.1
    assert error(x, optimal_1d(x, k)) == pytest.approx(brute_force(x, k, np.ones_like(x)), abs=1e-12)
    assert error(x, optimal_1d(x, k, w), w) == pytest.approx(brute_force(x, k, w), abs=1e-12)
    assert error(x, lloyd_1d(x, k)) >= brute_force(x, k, np.ones_like(x)) - 1e-12


def test_lloyd_within_one_percent_of_the_optimum():
    x = np.random.default_rng(0).normal(size=1500)
    optimum = error(x, optimal_1d(x, 8))
    assert optimum <= error(x, lloyd_1d(x, 8)) <= 1.01 * optimum


def test_emptied_clusters_are_refilled():
    """Linear init on heavy tails leaves tail centroids with no weights; each is re-placed by
    bisecting the worst cluster, so all k codes stay in use."""
    x = np.random.default_rng(0).standard_t(2, 1500)
    centroids = lloyd_1d(x, 16)
    assert centroids.size == 16 and np.all(np.diff(centroids) > 0)
    assert np.bincount(nearest(x, centroids), minlength=16).min() > 0


def test_codebook_is_exact_for_small_layers_and_assigns_nearest():
    w = torch.tensor([0.0, 0.1, 0.2, 1.0, 1.2, 5.0])
    centroids, assignment = kmeans_codebook(w, 3)
    assert centroids.tolist() == pytest.approx([0.1, 1.1, 5.0])
    assert assignment.tolist() == [0, 0, 0, 1, 1, 2]
    big = torch.from_numpy(np.random.default_rng(1).normal(size=50_000).astype(np.float32))
    centroids, assignment = kmeans_codebook(big, 16)
    distance = (big[:, None] - centroids[None]).abs()
    assert torch.equal(assignment, distance.argmin(1))
