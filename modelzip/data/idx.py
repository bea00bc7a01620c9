"""The IDX file format (MNIST's): read and write n-dimensional arrays, raw or gzipped.

Layout: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per
dimension, then the values in big-endian C order. Every malformed file raises DataError
naming the file, so a bad download never surfaces as a numpy or zlib traceback.
"""

from __future__ import annotations

import gzip
import math
import os
import secrets
import zlib
from pathlib import Path

import numpy as np

from modelzip.errors import DataError

# IDX type code -> big-endian numpy dtype.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES: dict[np.dtype, int] = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip detected by its magic bytes) into a writable native-endian array."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from e
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip stream ({e})") from e

    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise DataError(f"{path}: not an IDX file (bad magic {data[:4].hex() or 'empty'})")
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{code:02X}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header ({len(data)} bytes, {ndim} dimensions declared)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = _DTYPES[code]
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "trailing bytes"
        raise DataError(
            f"{path}: {problem}: shape {shape} of {dtype.newbyteorder('=').name} "
            f"needs {expected} bytes, file has {len(data)}"
        )
    # frombuffer gives a read-only big-endian view; astype makes the native, writable copy torch wants.
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write `array` as IDX (gzipped when the name ends in .gz), atomically: readers never see half a file."""
    path = Path(path)
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        names = ", ".join(d.newbyteorder("=").name for d in _DTYPES.values())
        raise DataError(f"{path}: IDX cannot store dtype {array.dtype}; use one of {names}")
    if any(d >= 2**32 for d in array.shape):
        raise DataError(f"{path}: shape {array.shape} does not fit an IDX header")

    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(_DTYPES[code], copy=False).tobytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)  # mtime=0: the same array always gives the same bytes

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # same folder, so os.replace is atomic
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise DataError(f"cannot write IDX file {path}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)
