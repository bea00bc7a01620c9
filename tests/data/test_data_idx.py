"""IDX reading and writing: round trips, hand-made bytes, and every malformed-file error."""

import gzip

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelzip.data import read_idx, write_idx
from modelzip.errors import DataError

HEADER_2X2X2_U8 = b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02" * 3


def test_hand_made_uint8_file_parses(tmp_path):
    path = tmp_path / "cube"
    path.write_bytes(HEADER_2X2X2_U8 + bytes(range(8)))
    array = read_idx(path)
    assert array.dtype == np.uint8
    np.testing.assert_array_equal(array, np.arange(8, dtype=np.uint8).reshape(2, 2, 2))
    array[0, 0, 0] = 9  # writable: torch.from_numpy must not warn


def test_hand_made_int16_is_big_endian(tmp_path):
    path = tmp_path / "pair"
    path.write_bytes(b"\x00\x00\x0b\x01\x00\x00\x00\x02" + b"\x01\x02\xff\xfe")
    array = read_idx(path)
    assert array.dtype == np.int16 and array.dtype.isnative
    assert array.tolist() == [258, -2]


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_uint8_round_trip(tmp_path, name):
    array = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, array)
    np.testing.assert_array_equal(read_idx(tmp_path / name), array)
    assert (tmp_path / name).read_bytes().startswith(b"\x1f\x8b") == name.endswith(".gz")


def test_float32_round_trip(tmp_path):
    array = np.array([[0.0, 0.25], [1.0, -3.5e-7]], dtype=np.float32)
    write_idx(tmp_path / "x.idx", array)
    assert (tmp_path / "x.idx").read_bytes()[:4] == b"\x00\x00\x0d\x02"
    result = read_idx(tmp_path / "x.idx")
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, array)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    array=hnp.arrays(
        dtype=st.sampled_from(["u1", "i1", ">i2", "<i4", "f4", ">f8"]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    ),
    gz=st.booleans(),
)
def test_round_trip_any_dtype_and_shape(tmp_path, array, gz):
    path = tmp_path / ("a.gz" if gz else "a")
    write_idx(path, array)
    result = read_idx(path)
    assert result.dtype == array.dtype.newbyteorder("=") and result.shape == array.shape
    np.testing.assert_array_equal(result, array)


def test_gzip_detected_by_content_not_name(tmp_path):
    write_idx(tmp_path / "a.gz", np.arange(6, dtype=np.uint8))
    (tmp_path / "a.gz").rename(tmp_path / "plain-name")
    assert read_idx(tmp_path / "plain-name").tolist() == [0, 1, 2, 3, 4, 5]


def test_gzip_output_is_deterministic(tmp_path):
    array = np.arange(100, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (HEADER_2X2X2_U8 + bytes(7), "truncated: shape (2, 2, 2) of uint8 needs 24 bytes, file has 23"),
        (HEADER_2X2X2_U8 + bytes(9), "trailing bytes"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated header"),
        (b"\x01\x02\x08\x01" + bytes(5), "bad magic 01020801"),
        (b"", "bad magic empty"),
        (b"\x00\x00\x0a\x01\x00\x00\x00\x01\x00", "unknown IDX type code 0x0A"),
        (gzip.compress(HEADER_2X2X2_U8 + bytes(8))[:-6], "corrupt gzip"),
        (b"\x1f\x8b" + bytes(30), "corrupt gzip"),
    ],
)
def test_malformed_files_raise_data_error_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match="broken-idx3-ubyte") as info:
        read_idx(path)
    assert fragment in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read IDX file .*nope"):
        read_idx(tmp_path / "nope")


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(DataError, match="cannot store dtype int64; use one of uint8"):
        write_idx(tmp_path / "labels", np.arange(3))
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    write_idx(tmp_path / "a", np.zeros(3, np.uint8))
    write_idx(tmp_path / "a", np.ones(4, np.uint8))  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    assert read_idx(tmp_path / "a").tolist() == [1, 1, 1, 1]
    with pytest.raises(DataError, match="cannot write IDX file .*missing"):
        write_idx(tmp_path / "missing" / "a", np.zeros(3, np.uint8))
