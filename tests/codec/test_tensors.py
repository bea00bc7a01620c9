"""Per-tensor encodings: choice of encoding, exact round trips, entry keys, validation."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelzip.codec.tensors import DTYPES, SECTIONS, decode_tensor, encode_tensor, priced_encodings
from modelzip.errors import FormatError

COMMON = {"encoding", "dtype", "shape", "count", "nonzero"}
KEYS = {
    "raw": COMMON | {"raw_bytes"},
    "dense": COMMON | {"codebook_size", "value_bits_fixed", "codebook_bytes", "value_bytes"},
    "sparse": COMMON
    | {"codebook_size", "value_bits_fixed", "index_bits", "entries", "fillers"}
    | {"codebook_bytes", "index_bytes", "value_bytes"},
    "sparse-raw": COMMON | {"index_bits", "entries", "fillers", "index_bytes", "value_bytes"},
    "dense-packed": COMMON | {"codebook_size", "value_bits_fixed", "codebook_bytes", "value_bytes"},
}


BELL = np.exp(-0.5 * ((np.arange(16) - 7.5) / 2.5) ** 2)
BELL /= BELL.sum()


def round_trip(array: np.ndarray) -> dict:
    entry, sections = encode_tensor(array)
    out = decode_tensor(entry, sections)
    assert out.dtype == array.dtype and out.shape == array.shape
    assert out.tobytes() == np.ascontiguousarray(array).tobytes()
    assert set(entry) == KEYS[entry["encoding"]]
    return entry


@pytest.fixture(scope="module")
def examples(make_pruned) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    pruned = rng.normal(size=(200, 100)).astype(np.float32)
    pruned[rng.random(pruned.shape) < 0.95] = 0
    return {
        "raw": rng.normal(size=(50, 40)).astype(np.float32),
        "dense": rng.choice(np.linspace(-1, 1, 16, dtype=np.float32), size=(100, 100), p=BELL),  # peaked: Huffman
        "sparse": make_pruned(rng, (300, 200), 0.1),
        "sparse-raw": pruned,
        "dense-packed": rng.choice([-0.5, 0.5], size=(64, 50)).astype(np.float32),  # binary: Huffman needs 1.5 bits
    }


@pytest.mark.parametrize("encoding", list(KEYS))
def test_chosen_encoding_and_keys(examples, encoding):
    array = examples[encoding]
    entry = round_trip(array)
    assert entry["encoding"] == encoding
    assert entry["count"] == array.size and entry["shape"] == list(array.shape)
    assert entry["nonzero"] == np.count_nonzero(array)
    if "entries" in entry:
        assert entry["entries"] == entry["nonzero"] + entry["fillers"]
        assert 1 <= entry["index_bits"] <= 8
    if "codebook_size" in entry:
        assert entry["codebook_size"] == np.unique(array).size
        assert entry["value_bits_fixed"] == int(np.ceil(np.log2(entry["codebook_size"])))


def test_long_zero_runs_use_fillers(make_pruned):
    array = make_pruned(np.random.default_rng(3), (100_000,), 0.002, levels=4)
    entry = round_trip(array)
    assert entry["encoding"] == "sparse" and entry["fillers"] > 0


@pytest.mark.parametrize("name", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (4, 3, 2, 2)])
def test_every_dtype_and_shape(name, shape):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 3, size=shape).astype(name)
    round_trip(array)


def test_signed_zero_and_nan_payloads_are_kept():
    values = np.array([0.0, -0.0, 1.0, np.nan], dtype=np.float32)
    values = np.concatenate([values, np.array([0x7FC00001], dtype=np.uint32).view(np.float32)])
    array = np.tile(values, 50)
    assert round_trip(array)["encoding"] in ("dense", "sparse")
    assert round_trip(np.tile(values[:3], 40))["nonzero"] == 80  # -0.0 counts as non-zero


@pytest.mark.parametrize(
    "array", [np.arange(24, dtype=">f8").reshape(4, 6)[:, ::2], np.arange(30, dtype=np.int16)[::3]]
)
def test_big_endian_and_non_contiguous_input(array):
    entry, sections = encode_tensor(array)
    out = decode_tensor(entry, sections)
    assert out.dtype == array.dtype.newbyteorder("=") and np.array_equal(out, array)


def test_unsupported_dtype():
    with pytest.raises(ValueError, match="unsupported dtype"):
        encode_tensor(np.array(["a"]))


float_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
    elements=st.sampled_from([0.0, 0.0, 0.0, -0.0, 1.5, -2.25, 1e-3, float("inf")]),
)


@settings(max_examples=60, deadline=None)
@given(float_arrays)
def test_round_trip_property(array):
    round_trip(array)


def mutate(array: np.ndarray, **changes) -> tuple[dict, list[bytes]]:
    entry, sections = encode_tensor(array)
    return {**entry, **changes}, sections


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"encoding": "zip"}, "unknown tensor encoding 'zip'"),
        ({"encoding": ["sparse"]}, "unknown tensor encoding"),
        ({"dtype": "object"}, "unsupported dtype 'object'"),
        ({"shape": [300, -200]}, "shape must be a list of non-negative ints"),
        ({"shape": [300, 199]}, "has 59700 elements but count is 60000"),
        ({"count": True}, "'count' must be an int"),
        ({"codebook_bytes": 4}, "codebook section is .* bytes, entry says 4"),
        ({"codebook_size": 300}, "'codebook_size' must be an int in \\[1, 256\\]"),
        ({"codebook_size": 2}, "codebook is .* bytes, 2 float32 values need 8"),
        ({"entries": 10**9}, "'entries' must be an int in \\[0, 60000\\]"),
        ({"entries": 100}, "Huffman stream holds more than the expected 100"),
    ],
)
def test_invalid_entries(examples, changes, message):
    entry, sections = mutate(examples["sparse"], **changes)
    with pytest.raises(FormatError, match=message):
        decode_tensor(entry, sections)


def test_invalid_sections(examples):
    entry, sections = encode_tensor(examples["sparse"])
    with pytest.raises(FormatError, match="needs 3 sections"):
        decode_tensor(entry, sections[:2])
    with pytest.raises(FormatError, match="must be a JSON object"):
        decode_tensor([entry], sections)


def test_codebook_index_out_of_range():
    array = np.repeat(np.array([1.0, 2.0, 3.0], dtype=np.float32), [200, 10, 10])  # peaked: Huffman-coded
    entry, (codebook, values) = encode_tensor(array)
    assert entry["encoding"] == "dense"
    entry = {**entry, "codebook_size": 2, "codebook_bytes": 8}
    with pytest.raises(FormatError, match="codebook index 2 out of range for a codebook of 2"):
        decode_tensor(entry, [codebook[:8], values])


def test_sparse_positions_beyond_the_tensor(examples):
    entry, sections = encode_tensor(examples["sparse-raw"])
    count = entry["count"] - 1000  # same entries, shorter tensor
    with pytest.raises(FormatError, match="sparse indices reach position"):
        decode_tensor({**entry, "shape": [count], "count": count}, sections)


def test_raw_size_mismatch():
    entry, sections = encode_tensor(np.arange(5, dtype=np.int32))
    with pytest.raises(FormatError, match="raw section is 16 bytes, 5 int32 values need 20"):
        decode_tensor({**entry, "raw_bytes": 16}, [sections[0][:16]])


@pytest.mark.parametrize(("low", "high", "bits"), [(-7, 7, 4), (-1, 0, 1), (-127, 127, 8), (100, 103, 2)])
def test_flat_integer_codes_take_their_bit_width(low, high, bits):
    codes = np.random.default_rng(1).integers(low, high + 1, size=4000).astype(np.int16)
    entry = round_trip(codes)
    assert (entry["encoding"], entry["value_bits_fixed"]) == ("dense-packed", bits)
    assert entry["value_bytes"] == -(-4000 * bits // 8)


def test_constant_tensor_takes_no_value_bytes():
    entry = round_trip(np.full(1000, 3, dtype=np.int32))
    assert (entry["encoding"], entry["value_bytes"], entry["codebook_bytes"]) == ("dense-packed", 0, 4)


def test_peaked_integer_codes_are_huffman_coded():
    """Codes of a bell-shaped weight at 4 bits: Huffman beats the fixed 4 bits; pruned ones go sparse."""
    rng = np.random.default_rng(2)
    codes = np.clip(np.round(rng.normal(0, 1.5, 20000)), -7, 7).astype(np.int8)
    entry = round_trip(codes)
    assert entry["encoding"] == "dense" and entry["value_bytes"] < 0.75 * 20000 * 4 / 8  # 6,786 bytes: ~2.7 bits
    codes[rng.random(codes.size) < 0.9] = 0
    assert round_trip(codes)["encoding"] == "sparse"


def test_packed_indices_beyond_the_codebook():
    entry, (codebook, values) = encode_tensor(np.arange(1, 4, dtype=np.int8).repeat(1000))
    assert (entry["encoding"], entry["value_bits_fixed"]) == ("dense-packed", 2)
    with pytest.raises(FormatError, match="codebook index 3 out of range for a codebook of 3"):
        decode_tensor(entry, [codebook, b"\xff" + values[1:]])  # 2-bit index 3: a 4th codeword
    with pytest.raises(FormatError, match="value section is 749 bytes, 3000 indices of 2 bits need 750"):
        decode_tensor({**entry, "value_bytes": 749}, [codebook, values[:749]])


def candidate_arrays() -> list[np.ndarray]:
    """Every encoding family, ties and the codebook search's corner cases (values the strided
    sample misses, more than 256 patterns found only late)."""
    rng = np.random.default_rng(11)
    book = rng.normal(size=31).astype(np.float32)
    pruned = book[rng.integers(0, 31, 200_000)]
    pruned[rng.random(pruned.size) < 0.92] = 0
    rare = pruned.copy()
    rare[[5, 150_001]] = [7.0, 9.0]  # two values between the sample's strides
    late = np.repeat(np.arange(250, dtype=np.float32), 1000)
    late[rng.integers(0, late.size, 10)] = rng.normal(size=10)  # 260 patterns, 250 of them common
    raw_pruned = rng.normal(size=5000).astype(np.float32)
    raw_pruned[rng.random(5000) < 0.8] = 0
    return [pruned, rare, late, raw_pruned, np.zeros(300, np.float16), rng.integers(-8, 8, 999).astype(np.int8),
            np.array([0.0, -0.0] * 40, np.float32), rng.normal(size=(7, 3)).astype(np.float64)]


@pytest.mark.parametrize("index", range(8))
def test_every_candidate_is_priced_exactly(index):
    """The encoder encodes only the winner, so each priced size must be the size of its sections."""
    array = candidate_arrays()[index]
    plans = priced_encodings(array)
    for entry, build in plans:
        sections = build()
        assert [entry[f"{role}_bytes"] for role in SECTIONS[entry["encoding"]]] == list(map(len, sections))
        assert decode_tensor(entry, sections).tobytes() == array.tobytes()
    entry, sections = encode_tensor(array)
    brute = min(plans, key=lambda plan: sum(map(len, plan[1]())) + len(json.dumps(plan[0], separators=(",", ":"))))
    assert entry == brute[0]


def test_late_patterns_reject_the_codebook():
    late = candidate_arrays()[2]
    assert {entry["encoding"] for entry, _ in priced_encodings(late)} == {"raw"}
    common = np.repeat(np.arange(1, 251, dtype=np.float32), 1000)
    assert {entry["encoding"] for entry, _ in priced_encodings(common)} == {"raw", "dense", "dense-packed"}
