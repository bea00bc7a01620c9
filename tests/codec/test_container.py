"""The .mzip container: round trips, golden bytes, corruption detection, speed and size."""

import json
import os
import statistics
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelzip.codec import huffman
from modelzip.codec.container import DECODED_FLOOR, HEADER_FLOOR, MAX_DEPTH, decoded_cap, dumps, loads, read_header
from modelzip.errors import ChecksumError, ConfigError, FormatError, LimitError, TruncatedError

GOLDEN = Path(__file__).parent / "golden" / "tiny.mzip"


def tiny() -> dict[str, np.ndarray]:
    """A fixed dict covering the sparse, raw and dense encodings (and -0.0). Regenerate the golden
    file after an intended format change with MODELZIP_UPDATE_GOLDEN=1 pytest tests/codec."""
    weight = np.zeros((20, 50), dtype=np.float32)
    weight.flat[np.arange(30) * 33 % 1000] = np.array([0.5, -0.25, 0.125, 0.5])[np.arange(30) % 4]
    embedding = np.array([0.25, -0.5, 1.0, -0.0], dtype=np.float32)[np.arange(64) * 7 % 4].reshape(8, 8)
    return {"fc.weight": weight, "fc.bias": np.array([0.1, -0.2], dtype=np.float32), "emb": embedding}


def assert_identical(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(found) == list(expected)  # order preserved, though the JSON keys are sorted
    for name, array in expected.items():
        assert found[name].dtype == array.dtype and found[name].shape == array.shape, name
        bits = found[name].reshape(-1).view(np.uint8)
        assert bits.tobytes() == array.reshape(-1).view(np.uint8).tobytes(), name  # bit-identical


def container(header: object) -> bytes:
    """Bytes with a valid preamble around an arbitrary header object, for malformed headers."""
    packed = zlib.compress(json.dumps(header).encode())
    return b"MZIP" + struct.pack("<HII", 1, len(packed), zlib.crc32(packed)) + packed


GOOD = dumps(tiny(), {"model": "tiny"})
HEADER_END = 14 + struct.unpack_from("<I", GOOD, 6)[0]


@pytest.fixture(scope="module")
def model(make_pruned) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {
        "conv1.weight": make_pruned(rng, (20, 1, 5, 5), 0.66, levels=16),
        "fc.weight": make_pruned(rng, (200, 300), 0.1),
        "dense.weight": rng.normal(size=(30, 40)).astype(np.float32),
        "bn.num_batches_tracked": np.array(1234, dtype=np.int64),
        "fc.bias": rng.normal(size=200).astype(np.float32),
    }


def test_round_trip(model):
    data = dumps(model, {"model": "test", "accuracy": 0.99})
    meta, tensors = loads(data)
    assert meta == {"model": "test", "accuracy": 0.99}
    assert_identical(tensors, model)
    encodings = {name: entry["encoding"] for name, entry in read_header(data)["tensors"].items()}
    assert encodings["fc.weight"] == "sparse" and encodings["dense.weight"] == "raw"
    assert encodings["bn.num_batches_tracked"] == "raw"


def test_negative_zero_survives():
    array = np.array([[0.0, -0.0], [-0.0, 0.0]] * 50, dtype=np.float32)
    assert_identical(loads(dumps({"w": array}, {}))[1], {"w": array})


def test_empty_model():
    assert loads(dumps({}, {"note": "nothing"})) == ({"note": "nothing"}, {})


def test_golden_bytes():
    data = dumps(tiny(), {"model": "tiny"})
    if os.environ.get("MODELZIP_UPDATE_GOLDEN"):
        GOLDEN.write_bytes(data)
    golden = GOLDEN.read_bytes()
    assert data == golden
    meta, tensors = loads(golden)
    assert meta == {"model": "tiny"}
    assert_identical(tensors, tiny())
    encodings = [entry["encoding"] for entry in read_header(golden)["tensors"].values()]
    assert sorted(encodings) == ["dense-packed", "raw", "sparse"]


def test_files_from_before_dense_packed_still_load():
    """The writer once stored `emb` Huffman-coded ("dense"); such files must decode the same forever."""
    old = (GOLDEN.parent / "tiny-huffman-dense.mzip").read_bytes()
    assert sorted(e["encoding"] for e in read_header(old)["tensors"].values()) == ["dense", "raw", "sparse"]
    meta, tensors = loads(old)
    assert meta == {"model": "tiny"}
    assert_identical(tensors, tiny())


def test_read_header_from_path_reads_only_the_header(tmp_path):
    header = read_header(GOOD)
    path = tmp_path / "cut.mzip"
    path.write_bytes(GOOD[:-10])  # sections cut short: the header is still readable
    assert read_header(path) == read_header(str(path)) == header
    assert header["meta"] == {"model": "tiny"} and len(header["sections"]) == 6
    assert header["tensors"]["fc.weight"]["sections"] == [0, 3]


def test_dumps_rejects_bad_meta():
    with pytest.raises(ValueError, match="JSON"):
        dumps({}, {"x": float("nan")})
    with pytest.raises(TypeError, match="meta must be a dict"):
        dumps({}, [])


NO_SECTION = {"length": 0, "crc32": 0}


def bad_header(tensors: dict, sections: list) -> bytes:
    return container({"meta": {}, "tensors": tensors, "sections": sections})


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"PK\x03\x04" + GOOD[4:], FormatError, "not a .mzip file"),
        (GOOD[:9], TruncatedError, "preamble: expected 14 bytes, found 9"),
        (GOOD[:4] + b"\x02\x00" + GOOD[6:], FormatError, "unsupported .mzip format version 2"),
        (GOOD[:40], TruncatedError, f"inside the header: expected {HEADER_END} bytes, found 40"),
        (
            GOOD[: HEADER_END + 20],
            TruncatedError,
            f"section 1 \\(index of tensor 'fc.weight'\\): expected {len(GOOD)} bytes, found {HEADER_END + 20}",
        ),
        (GOOD + b"\x00\x00", FormatError, "2 trailing byte\\(s\\) after the last section"),
        (GOOD[:20] + bytes([GOOD[20] ^ 1]) + GOOD[21:], ChecksumError, "header CRC-32 mismatch"),
        (GOOD[:-1] + bytes([GOOD[-1] ^ 1]), ChecksumError, "section 5 \\(value of tensor 'emb'\\)"),
        (container([1]), FormatError, "header must be a JSON object, found list"),
        (container({"meta": {}, "tensors": {}}), FormatError, "header key 'sections' must be a JSON list"),
        (bad_header({}, [{"length": -1, "crc32": 0}]), FormatError, "section 0 must be"),
        (bad_header({"a": {}}, []), FormatError, "tensor 'a' must record 'sections'"),
        (bad_header({"a": {"sections": [0, 0]}}, []), FormatError, "tensor 'a' records no sections"),
        (
            bad_header({"a": {"sections": [1, 1]}}, [NO_SECTION] * 2),
            FormatError,
            "tensor 'a' starts at section 1, expected section 0",
        ),
        (bad_header({"a": {"sections": [0, 3]}}, []), FormatError, "tensors use 3 sections but the header lists 0"),
        (
            bad_header({"a": {"encoding": "raw", "sections": [0, 1]}}, [NO_SECTION]),
            FormatError,
            "tensor 'a': unsupported dtype None",
        ),
    ],
)
def test_precise_errors(data, error, message):
    with pytest.raises(error, match=message):
        loads(data)


@pytest.mark.parametrize("header", [b"\xff{", b"{1: 2}", b"[" * 64 + b"]" * 63])
def test_header_not_json(header):
    packed = zlib.compress(header)
    data = b"MZIP" + struct.pack("<HII", 1, len(packed), zlib.crc32(packed)) + packed
    with pytest.raises(FormatError, match="not zlib-compressed UTF-8 JSON"):
        read_header(data)


@pytest.mark.parametrize("cut", range(len(GOOD)))
def test_every_truncation_is_detected(cut):
    with pytest.raises(TruncatedError):
        loads(GOOD[:cut])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.integers(1, 255))
def test_every_byte_flip_is_detected(position, mask):
    data = bytearray(GOOD)
    data[position] ^= mask
    with pytest.raises(FormatError):
        loads(bytes(data))


def test_lenet_loads_fast_and_small(lenet):
    data = dumps(lenet, {"model": "lenet-300-100"})
    assert_identical(loads(data)[1], lenet)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        loads(data)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 5e-3  # ~0.3 ms measured; torch.load takes ~0.4-0.6 ms
    nonzero = sum(np.count_nonzero(array) for name, array in lenet.items() if name.endswith("weight"))
    assert 8 * len(data) < 12 * nonzero  # biases included; Deep Compression reports ~40x for LeNet


def test_header_bomb_is_refused():
    from modelzip.codec.container import MAX_HEADER, PREAMBLE

    packed = zlib.compress(b" " * (MAX_HEADER + 1), 9)
    blob = PREAMBLE.pack(b"MZIP", 1, len(packed), zlib.crc32(packed)) + packed
    with pytest.raises(FormatError, match="more than"):
        loads(blob)


def preamble(packed: bytes) -> bytes:
    return b"MZIP" + struct.pack("<HII", 1, len(packed), zlib.crc32(packed)) + packed


@pytest.mark.parametrize(("packed", "message"), [
    (zlib.compress(b"{}")[:-4], "ends early \\(no end of stream or adler-32 trailer\\)"),
    (zlib.compress(b"{}") + b"junk", "4 byte\\(s\\) after the header's zlib stream"),
    (zlib.compress(b"{}") + zlib.compress(b"{}"), "10 byte\\(s\\) after the header's zlib stream"),
])
def test_header_must_be_one_complete_zlib_stream(packed, message):
    with pytest.raises(FormatError, match=message):
        read_header(preamble(packed))


def test_header_nesting_is_capped_before_parsing():
    deep = {"meta": {"x": json.loads("[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2))}, "tensors": {}, "sections": []}
    assert read_header(container(deep))["meta"] == deep["meta"]  # exactly MAX_DEPTH levels, counting the header
    brackets_in_strings = {"meta": {"s": "[{" * 500, "t": "\\\"[" * 100}, "tensors": {}, "sections": []}
    assert read_header(container(brackets_in_strings)) == brackets_in_strings
    deep["meta"]["x"] = [deep["meta"]["x"]]
    start = time.perf_counter()
    with pytest.raises(LimitError, match=f"nests {MAX_DEPTH + 1} levels deep; the reader allows {MAX_DEPTH}"):
        read_header(container(deep))
    with pytest.raises(LimitError, match="nests 600 levels"):
        read_header(preamble(zlib.compress(b'{"meta":' + b"[" * 599 + b"]" * 599 + b"}")))
    assert time.perf_counter() - start < 0.05


def test_header_inflation_is_capped_relative_to_its_size():
    """60 MB of JSON from a 61 kB header would cost 1.5 s and 320 MB to parse: refused at 64x (1 MiB floor)."""
    text = b'{"meta":{"x":[' + b"0," * (HEADER_FLOOR // 2) + b'0]},"tensors":{},"sections":[]}'
    packed = zlib.compress(text, 9)
    with pytest.raises(LimitError, match=f"more than {HEADER_FLOOR} bytes from {len(packed)}"):
        read_header(preamble(packed))
    assert len(read_header(preamble(zlib.compress(text[: HEADER_FLOOR - 100] + b'0]},"tensors":{},"sections":[]}')))
               ["meta"]["x"]) > 1000


def bomb(entry: dict, sections: list[bytes]) -> bytes:
    """A CRC-valid file whose one tensor `t` has `entry` and `sections`."""
    header = {"meta": {}, "tensors": {"t": {**entry, "sections": [0, len(sections)]}},
              "sections": [{"length": len(s), "crc32": zlib.crc32(s)} for s in sections]}
    return container(header) + b"".join(sections)


COUNT = 10**8  # 400 MB of float32 declared in a few hundred bytes
EMPTY = huffman.encode(np.zeros(0, np.uint8))  # a Huffman stream of no symbols
BOMBS = {
    "dense-packed": ({"encoding": "dense-packed", "codebook_size": 1, "codebook_bytes": 4, "value_bytes": 0},
                     [b"\0" * 4, b""]),
    "sparse": ({"encoding": "sparse", "codebook_size": 1, "codebook_bytes": 4, "entries": 0,
                "index_bytes": len(EMPTY), "value_bytes": len(EMPTY)}, [b"\0" * 4, EMPTY, EMPTY]),
    "sparse-raw": ({"encoding": "sparse-raw", "entries": 0, "index_bytes": len(EMPTY), "value_bytes": 0}, [EMPTY, b""]),
}


@pytest.mark.parametrize("encoding", list(BOMBS))
@pytest.mark.parametrize("count", [COUNT, 2**31, 2**60])
def test_decompression_bombs_are_refused_from_the_header(encoding, count):
    entry, sections = BOMBS[encoding]
    data = bomb({"dtype": "float32", "shape": [count], "count": count, **entry}, sections)
    start = time.perf_counter()
    with pytest.raises(LimitError, match=f"tensor 't' \\({count} float32 values\\) brings the decoded size to "
                                         f"{4 * count} bytes, over the limit of {DECODED_FLOOR}.*max_decoded_bytes"):
        loads(data)
    assert time.perf_counter() - start < 0.01


def test_decoded_size_cap():
    assert decoded_cap(1000) == DECODED_FLOOR and decoded_cap(10**6) == 2000 * 10**6
    entry, sections = BOMBS["dense-packed"]
    trusted = bomb({"dtype": "float32", "shape": [10**6], "count": 10**6, **entry}, sections)
    assert not loads(trusted, max_decoded_bytes=4 * 10**6)[1]["t"].any()  # a trusted file: the caller raises it
    small = dumps({"w": np.zeros(1000, np.float32)}, {})
    assert loads(small, max_decoded_bytes=4000)[1]["w"].size == 1000
    with pytest.raises(LimitError, match="over the limit of 3999 \\(max_decoded_bytes=3999\\)"):
        loads(small, max_decoded_bytes=3999)
    with pytest.raises(ConfigError, match="max_decoded_bytes must be"):
        loads(small, max_decoded_bytes=-1)


@pytest.mark.parametrize(("entry", "sections", "message"), [
    ({"encoding": "dense", "codebook_size": 1, "codebook_bytes": 4, "value_bytes": 2}, [b"\0" * 4, b"\0\0"],
     "value section of 2 bytes cannot hold 100 Huffman-coded symbols"),
    ({"encoding": "sparse-raw", "entries": 100, "index_bytes": 12, "value_bytes": 400}, [b"\0" * 12, b"\0" * 400],
     "index section of 12 bytes cannot hold 100 Huffman-coded symbols"),
    ({"encoding": "raw", "raw_bytes": 4}, [b"\0" * 4], "raw section is 4 bytes, 100 float32 values need 400"),
])
def test_counts_must_fit_their_sections(entry, sections, message):
    with pytest.raises(FormatError, match=f"tensor 't': {message}"):
        loads(bomb({"dtype": "float32", "shape": [100], "count": 100, **entry}, sections))
