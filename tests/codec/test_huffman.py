"""Canonical Huffman coding stored as a raw DEFLATE block."""

import itertools
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelzip.codec.huffman import (CHUNK, canonical_codes, code_lengths, decode, encode, encoded_size, entropy_bits,
                                    symbol_counts)
from modelzip.errors import FormatError

symbol_arrays = st.one_of(
    st.lists(st.integers(0, 255), max_size=300),
    st.lists(st.sampled_from([0, 3, 255]), max_size=300),  # few distinct symbols
    st.lists(st.integers(0, 255), min_size=1, max_size=1),
).map(lambda values: np.array(values, dtype=np.uint8))


def kraft(lengths: np.ndarray) -> float:
    used = lengths[lengths > 0].astype(float)
    return float(np.sum(2.0**-used))


def fibonacci(n: int) -> np.ndarray:
    values = [1, 1]
    while len(values) < n:
        values.append(values[-1] + values[-2])
    return np.array(values[:n])


def test_code_lengths_hand_worked():
    # Heap merges: 5+9=14, 12+13=25, 14+16=30, 25+30=55, 45+55=100. Depths: 45 -> 1;
    # 12, 13 (under 25) and 16 (under 30) -> 3; 5, 9 (under 14, under 30) -> 4.
    assert code_lengths(np.array([45, 13, 12, 16, 9, 5])).tolist() == [1, 3, 3, 3, 4, 4]


def test_code_lengths_unused_and_lone_symbols():
    assert code_lengths(np.array([0, 7, 0])).tolist() == [0, 1, 0]
    assert code_lengths(np.zeros(4, dtype=int)).tolist() == [0, 0, 0, 0]
    assert code_lengths(np.array([0, 2, 0, 2])).tolist() == [0, 1, 0, 1]


def test_canonical_codes_rfc1951_example():
    lengths = np.array([3, 3, 3, 3, 3, 2, 4, 4])  # RFC 1951 §3.2.2, symbols A..H
    codes = canonical_codes(lengths)
    written = [format(int(c), f"0{n}b") for c, n in zip(codes, lengths)]
    assert written == ["010", "011", "100", "101", "110", "00", "1110", "1111"]


def test_canonical_codes_reject_oversubscribed_lengths():
    with pytest.raises(ValueError, match="over-subscribed"):
        canonical_codes(np.array([1, 1, 1]))


def test_length_limit_on_fibonacci_counts():
    counts = fibonacci(25)
    assert code_lengths(counts, max_length=64).max() > 15  # plain Huffman needs 24 bits
    limited = code_lengths(counts, max_length=15)
    assert limited.max() == 15
    assert kraft(limited) == 1.0
    assert np.all(np.diff(limited.astype(int)) <= 0)  # rarer symbols never get shorter codes


def test_length_limit_is_optimal():
    counts = fibonacci(7)
    limited = code_lengths(counts, max_length=4)
    candidates = np.array(list(itertools.product(range(1, 5), repeat=7)))  # every length vector
    feasible = candidates[np.sum(2.0**-candidates, axis=1) <= 1]
    assert limited.max() <= 4
    assert int(limited @ counts) == int((feasible @ counts).min())


def test_code_lengths_rejects_too_many_symbols():
    with pytest.raises(ValueError, match="at most 2 bits"):
        code_lengths(np.ones(5, dtype=int), max_length=2)


@settings(max_examples=150, deadline=None)
@given(symbol_arrays)
def test_round_trip(symbols):
    data = encode(symbols)
    assert decode(data, symbols.size).tolist() == symbols.tolist()
    assert zlib.decompress(data, -15) == symbols.tobytes()  # a plain RFC 1951 stream
    assert encoded_size(symbol_counts(symbols)) == len(data)


def test_stream_across_chunks():
    """Chunks end at arbitrary bit offsets; the stream must not notice."""
    symbols = np.minimum(np.random.default_rng(4).geometric(0.05, 2 * CHUNK + 12_345), 255).astype(np.uint8)
    data = encode(symbols)
    assert len(data) == encoded_size(symbol_counts(symbols))
    assert zlib.decompress(data, -15) == symbols.tobytes()


def test_round_trip_needs_length_limit():
    counts = fibonacci(24)  # plain Huffman would need 23-bit codes
    symbols = np.repeat(np.arange(24), counts)
    np.random.default_rng(0).shuffle(symbols)
    assert decode(encode(symbols), symbols.size).tolist() == symbols.tolist()


def test_encode_accepts_any_int_dtype_and_rejects_the_rest():
    assert encode(np.array([1, 2, 2], dtype=np.int64)) == encode(np.array([1, 2, 2], dtype=np.uint8))
    with pytest.raises(ValueError, match="integers"):
        encode(np.array([1.0]))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        encode(np.array([256]))


def test_size_close_to_entropy():
    rng = np.random.default_rng(1)
    symbols = np.minimum(rng.geometric(0.15, 20_000), 255)  # skewed, ~40 distinct symbols
    bits = 8 * len(encode(symbols))
    assert entropy_bits(symbols) <= bits <= 1.03 * entropy_bits(symbols)


def test_entropy_bits():
    assert entropy_bits(np.array([0, 0, 1, 1])) == 4.0
    assert entropy_bits(np.array([5, 5, 5])) == 0.0
    assert entropy_bits(np.array([], dtype=int)) == 0.0


STREAM = encode(np.random.default_rng(2).integers(0, 20, 500))


@pytest.mark.parametrize("cut", range(len(STREAM)))
def test_truncated_stream(cut):
    with pytest.raises(FormatError):
        decode(STREAM[:cut], 500)


def test_wrong_count_and_trailing_bytes():
    with pytest.raises(FormatError, match="more than the expected 499"):
        decode(STREAM, 499)
    with pytest.raises(FormatError, match="500 symbols, expected 501"):
        decode(STREAM, 501)
    with pytest.raises(FormatError, match="trailing"):
        decode(STREAM + b"\x00", 500)


def test_reserved_block_type():
    with pytest.raises(FormatError, match="invalid Huffman stream"):
        decode(bytes([STREAM[0] | 0b110]) + STREAM[1:], 500)  # BTYPE bits 10 -> 11 (reserved)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 8 * len(STREAM) - 1))
def test_bit_flip_never_escapes(bit):
    """A flipped bit either fails to decode (FormatError) or yields 500 symbols: the container's
    CRC-32 catches the latter; here we check no other exception ever escapes."""
    data = bytearray(STREAM)
    data[bit // 8] ^= 1 << (bit % 8)
    try:
        assert decode(bytes(data), 500).size == 500
    except FormatError:
        pass
