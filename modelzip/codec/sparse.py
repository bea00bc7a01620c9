"""Relative sparse indices with filler zeros (Deep Compression, Han et al. 2016, §3 and Fig. 2).

A pruned tensor keeps only its non-zero entries and, for each one, the number of zeros skipped
since the previous entry. With `index_bits`-bit gaps a run of more than 2**index_bits - 1 zeros
does not fit, so a *filler* entry is stored: gap 2**index_bits - 1, value zero, at its own
position. Gaps then fit a small alphabet that Huffman coding compresses further.
"""

import numpy as np


def relative_indices(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaps (uint8) and absolute positions (int64) of the entries that store `positions`.

    `positions` are the sorted flat positions of the non-zero elements. One entry per position,
    plus fillers where a gap exceeds 2**index_bits - 1; fillers sit on zero elements, so gathering
    the tensor at the returned positions yields their (zero) values.
    """
    gaps, _ = gap_layout(positions, index_bits)
    return gaps, absolute_positions(gaps)


def gap_layout(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaps (uint8) of the entries that store `positions`, and which entries are real (int64, one
    per position, ascending): the others are fillers, so an encoder can place the stored values
    without gathering the whole tensor."""
    if not 1 <= index_bits <= 8:
        raise ValueError(f"index_bits must lie in 1..8 (gaps are bytes), got {index_bits}")
    positions = np.asarray(positions, dtype=np.int64)  # (k,)
    if positions.ndim != 1:
        raise ValueError(f"positions must be 1-D, got shape {positions.shape}")
    skipped = np.diff(positions, prepend=-1) - 1  # (k,) zeros before each non-zero
    if skipped.size and skipped.min() < 0:
        raise ValueError("positions must be non-negative and strictly increasing")
    span = 1 << index_bits  # one filler covers span - 1 zeros plus its own position
    fillers = skipped >> index_bits  # (k,)
    real = np.cumsum(fillers + 1) - 1  # the real entry closes each group
    gaps = np.full(int(fillers.sum()) + positions.size, span - 1, dtype=np.uint8)  # (entries,)
    gaps[real] = skipped & (span - 1)
    return gaps, real


def absolute_positions(gaps: np.ndarray) -> np.ndarray:
    """Flat positions of the entries: cumsum(gaps + 1) - 1, in one int64 array (no uint8 overflow)."""
    positions = np.asarray(gaps).astype(np.int64)
    positions += 1
    np.cumsum(positions, out=positions)
    positions -= 1
    return positions
