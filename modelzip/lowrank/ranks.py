"""How many components a factorized layer keeps: by parameter budget or by singular-value energy.

A Linear weight (out, in) at rank r becomes r * (in + out) parameters (two factors); a Conv2d weight
(out, in, kh, kw) at Tucker-2 ranks (r_out, r_in) becomes in * r_in + r_in * r_out * kh * kw + r_out * out
(1x1 conv, core conv, 1x1 conv). Biases are the same in both forms and not counted.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from math import prod

import torch

from ..errors import ConfigError


def factorized_count(shape: Sequence[int], ranks: Sequence[int]) -> int:
    """Weight parameters of the factorized form of a (out, in) or (out, in, kh, kw) weight at `ranks`."""
    _check_shape(shape)
    if len(shape) == 2:
        (rank,) = ranks
        return rank * (shape[0] + shape[1])
    out, in_, kh, kw = shape
    r_out, r_in = ranks
    return in_ * r_in + r_in * r_out * kh * kw + r_out * out


def full_ranks(shape: Sequence[int]) -> tuple[int, ...]:
    """The ranks that reproduce any weight of `shape` exactly: min(out, in) for SVD, (out, in) for Tucker-2."""
    _check_shape(shape)
    return (min(shape[0], shape[1]),) if len(shape) == 2 else (shape[0], shape[1])


def rank_for_ratio(shape: Sequence[int], keep: float) -> tuple[int, ...]:
    """The largest ranks whose factorized count is <= keep * prod(shape) (at least 1, at most full).

    Linear: largest r with r * (in + out) <= keep * in * out, so (100, 300) at keep .25 gives r = 18.
    Tucker-2 keeps r_out : r_in in proportion out : in (each rounded, >= 1) and grows them together.
    When even rank 1 is over budget the answer is rank 1; the caller decides whether that still pays.
    """
    check_fraction(keep, "ratio")
    budget = keep * prod(shape) + 1e-9  # slack for keep * count landing a rounding error below an integer
    best = next(_candidates(shape))
    for ranks in _candidates(shape):
        if factorized_count(shape, ranks) > budget:
            break  # counts grow along the candidates
        best = ranks
    return best


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest r with sum(s[:r]^2) / sum(s^2) >= energy: the share of ||W||_F^2 a rank-r SVD keeps.

    (Eckart-Young: the best rank-r approximation's error is exactly the dropped s^2.) s = [3, 2, 1]
    has energies 9/14, 13/14, 1: energy .9 gives r = 2. An all-zero weight needs rank 1.
    """
    check_fraction(energy, "energy")
    squares = singular_values.detach().to(torch.float64) ** 2
    total = squares.sum()
    if total == 0:
        return 1
    below = int((torch.cumsum(squares, 0) / total < energy - 1e-12).sum())
    return min(below + 1, squares.numel())


def energy_ranks(weight: torch.Tensor, energy: float) -> tuple[int, ...]:
    """`rank_for_energy` per factorized mode: the weight's own singular values for a Linear (out, in);
    for a Conv2d (out, in, kh, kw) those of the mode-0 unfolding (out, in*kh*kw) give r_out and those
    of the mode-1 unfolding (in, out*kh*kw) give r_in (Tucker's HOSVD truncation per mode).
    """
    _check_shape(weight.shape)
    w = weight.detach().to(torch.float64)
    if w.dim() == 2:
        return (rank_for_energy(torch.linalg.svdvals(w), energy),)
    modes = (w.flatten(1), w.transpose(0, 1).flatten(1))  # (out, in*kh*kw), (in, out*kh*kw)
    r_out, r_in = (rank_for_energy(torch.linalg.svdvals(m), energy) for m in modes)
    return r_out, r_in


def check_fraction(value: object, what: str, layer: str | None = None) -> float:
    """`value` as a float in (0, 1], or a ConfigError naming the setting (and the layer)."""
    where = f" for layer {layer!r}" if layer else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(f"low-rank {what}{where} must be a number in (0, 1], got {value!r}")
    return float(value)


def check_ranks(shape: Sequence[int], ranks: Sequence[int]) -> tuple[int, ...]:
    """`ranks` as a tuple if each is an int in [1, full rank] and there is one per factorized mode."""
    full = full_ranks(shape)
    ranks = tuple(ranks)
    if len(ranks) != len(full) or any(isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= f
                                      for r, f in zip(ranks, full)):
        raise ConfigError(f"ranks {list(ranks)} do not fit a weight of shape {list(shape)}: "
                          f"give {len(full)} integer(s) between 1 and {list(full)}")
    return ranks


def _candidates(shape: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Rank tuples of growing parameter count: r = 1..min for SVD; for Tucker-2 the larger of out/in
    steps by one and the other follows in proportion (rounded half up), ending at (out, in)."""
    if len(shape) == 2:
        yield from ((r,) for r in range(1, min(shape[0], shape[1]) + 1))
        return
    out, in_ = shape[0], shape[1]
    big = max(out, in_)
    for t in range(1, big + 1):
        yield tuple(max(1, (2 * t * dim + big) // (2 * big)) for dim in (out, in_))


def _check_shape(shape: Sequence[int]) -> None:
    if len(shape) not in (2, 4):
        raise ConfigError(f"low-rank factorization takes (out, in) or (out, in, kh, kw) weights, got {list(shape)}")
