"""The OBS column-by-column solver against closed forms, and against plain rounding / magnitude pruning."""
import numpy as np
import pytest
import torch

from modelzip.errors import ConfigError
from modelzip.quantize import lloyd_1d
from modelzip.second_order import Codebook, Pruning, SecondOrderConfig, UniformGrid, obs_compress, output_error


@pytest.fixture
def problem():
    """A layer with correlated inputs (where compensation has something to work with)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 64, generator=g) @ torch.randn(64, 64, generator=g)
    return torch.randn(24, 64, generator=g), x.T @ x / len(x)


def error(w, new, h):
    return output_error(w[None], new[None], h[None])


def test_fixing_a_prefix_of_columns_gives_the_least_squares_optimum_of_the_rest(problem):
    w, h = problem
    k = 20  # columns 0..k-1 are pruned; the free ones must solve min ||X (w' - w)||^2 with w'_S = 0
    new = obs_compress(w, h, quantize=lambda cur, j: cur[:, j] * (j >= k), damp=0.0, block=16)
    s, r = slice(0, k), slice(k, None)
    hd, wd = h.double(), w.double()
    optimum = wd[:, r] + torch.linalg.solve(hd[r, r], hd[r, s] @ wd[:, s].T).T
    assert torch.count_nonzero(new[:, s]) == 0
    torch.testing.assert_close(new[:, r].double(), optimum, rtol=0, atol=1e-4)


def test_one_weight_removed_is_the_obs_update(problem):
    w, h = problem  # Hassibi & Stork: removing w_q moves the others by -w_q / [H^-1]_qq * H^-1 e_q
    new = obs_compress(w[:1], h, quantize=lambda cur, j: cur[:, j] * (j != 0), damp=0.0, block=64)
    hinv = torch.linalg.inv(h.double())
    expected = w[0].double() - w[0, 0].double() / hinv[0, 0] * hinv[0]
    torch.testing.assert_close(new[0].double(), expected, rtol=0, atol=1e-4)
    assert new[0, 0] == 0


def test_compensation_beats_rounding_and_magnitude_pruning_at_the_same_size(problem):
    w, h = problem
    eye = torch.eye(64)
    for grid in (lambda: UniformGrid(3, 24, 64, 0), lambda: UniformGrid(4, 24, 64, 16)):
        obs, plain = obs_compress(w, h, quantize=grid()), obs_compress(w, eye, quantize=grid(), damp=0.0)
        assert error(w, obs, h) < 0.7 * error(w, plain, h)
    obs, plain = obs_compress(w, h, pruning=Pruning(0.6)), obs_compress(w, eye, pruning=Pruning(0.6), damp=0.0)
    assert (obs == 0).float().mean() == pytest.approx(0.6, abs=0.01) == (plain == 0).float().mean()
    assert error(w, obs, h) < 0.75 * error(w, plain, h)


def test_n_m_pattern_and_grid_values(problem):
    w, h = problem
    grid = UniformGrid(4, 24, 64, 16)
    new = obs_compress(w, h, quantize=grid, pruning=Pruning(n=2, m=4))
    assert ((new.reshape(24, 16, 4) == 0).sum(-1) >= 2).all()
    codes, scale = grid.codes(new)
    assert scale.shape == (24, 4) and codes.abs().max() <= 7
    torch.testing.assert_close(codes.double() * scale.double().repeat_interleave(16, 1), new.double(), rtol=0,
                               atol=1e-6)


def test_codebook_values_and_weighted_1d_kmeans():
    # two clumps, the right one weighted 3x: the centroid of a merged cluster moves toward it
    values = np.array([0.0, 0.0, 1.0, 1.0])
    assert lloyd_1d(values, 2).tolist() == [0.0, 1.0]
    assert lloyd_1d(values, 1, np.array([1, 1, 3, 3])).tolist() == [0.75]
    book = Codebook.fit(torch.tensor([[-2.0, -1.9, 0.01, 0.02, 1.0, 1.1]]), 2, sparsity=0.3)
    # 0 is a value of its own; the kept weights form two clumps, and the third cluster, emptied by
    # Lloyd's iteration, is re-placed by bisecting the clump of larger error
    assert book.centroids.tolist() == [-2.0, pytest.approx(-1.9), 0.0, pytest.approx(1.05)]
    assert book.round(torch.tensor([0.015, -1.0, 3.0])).tolist() == [0.0, pytest.approx(-1.9), pytest.approx(1.05)]


@pytest.mark.parametrize(("options", "message"), [
    ({"bits": 4, "codebook": 3}, "one of bits .uniform codes., codebook .k-means. and step"),
    ({"step": 0.0}, "step must be a positive number"),
    ({"sparsity": 1.0}, "sparsity must be in"),
    ({"pattern": "4:2"}, "0 < N < M"),
    ({"pattern": "two"}, "must be 'N:M'"),
    ({}, "does nothing"),
    ({"bits": 4, "damp": float("nan")}, "damp >= 0"),
])
def test_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        SecondOrderConfig(**options)
