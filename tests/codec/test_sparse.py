"""Relative sparse indices with filler zeros (Deep Compression, Fig. 2)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelzip.codec.sparse import absolute_positions, relative_indices


def test_hand_worked_filler():
    # 1 zero before position 1, 2 before 4, then 10 before 15: more than 7 (3 bits), so a filler
    # skips 7 zeros and sits on the 8th (position 12); 2 zeros remain before 15.
    gaps, entries = relative_indices(np.array([1, 4, 15]), index_bits=3)
    assert gaps.tolist() == [1, 2, 7, 2]
    assert entries.tolist() == [1, 4, 12, 15]


@pytest.mark.parametrize(("zeros", "gaps"), [(7, [7]), (8, [7, 0]), (15, [7, 7]), (16, [7, 7, 0])])
def test_filler_boundaries(zeros, gaps):
    assert relative_indices(np.array([zeros]), index_bits=3)[0].tolist() == gaps


def test_empty_and_invalid():
    gaps, entries = relative_indices(np.array([], dtype=int), 5)
    assert gaps.size == entries.size == 0
    with pytest.raises(ValueError, match="1..8"):
        relative_indices(np.array([1]), 9)
    with pytest.raises(ValueError, match="increasing"):
        relative_indices(np.array([3, 3]), 4)


@given(st.sets(st.integers(0, 5000), max_size=200), st.integers(1, 8))
def test_round_trip(positions, index_bits):
    positions = np.array(sorted(positions), dtype=np.int64)
    gaps, entries = relative_indices(positions, index_bits)
    assert gaps.dtype == np.uint8 and gaps.max(initial=0) <= 2**index_bits - 1
    assert absolute_positions(gaps).tolist() == entries.tolist()
    fillers = np.setdiff1d(entries, positions)
    assert np.isin(positions, entries).all()
    assert np.all(gaps[np.isin(entries, fillers)] == 2**index_bits - 1)
    skipped = np.diff(positions, prepend=-1) - 1
    assert fillers.size == int(np.sum(skipped // 2**index_bits))  # no more fillers than needed
