"""Dense bit packing of small unsigned integers: n values of b bits (0..8) take ceil(n * b / 8) bytes.

Layout (little-endian at both levels, like numpy's `bitorder="little"`): value i occupies bits
i*b ... i*b + b - 1 of the stream, least significant bit first, and stream bit k is bit k % 8 of
byte k // 8. At 4 bits two values share a byte, the first in the low nibble: [1, 2] -> 0x21.
"""
import numpy as np


def packed_size(count: int, bits: int) -> int:
    """Bytes that `count` values of `bits` bits take: ceil(count * bits / 8)."""
    return -(-count * bits // 8)


CHUNK = 1 << 20  # values per step, a multiple of 8 so each step ends on a byte boundary


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """The values (each in [0, 2^bits), checked by the caller) packed `bits` bits apiece.

    Packs in chunks, so the 8-bytes-per-value bit matrix never exceeds a few MB."""
    values = values.reshape(-1)
    out = []
    for start in range(0, values.size, CHUNK):
        chunk = values[start : start + CHUNK].astype(np.uint8)
        stream = np.unpackbits(chunk[:, None], axis=1, bitorder="little")[:, :bits]
        out.append(np.packbits(stream.reshape(-1), bitorder="little").tobytes())
    return b"".join(out)


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """The `count` values `pack_bits` packed into `data` (which must be `packed_size` bytes), as uint8.

    Unpacks in chunks, so the (n, 8) bit matrix never exceeds a few MB; 0-bit values are all zero."""
    stream = np.frombuffer(data, dtype=np.uint8)
    out = np.zeros(count, dtype=np.uint8)
    for start in range(0, count if bits else 0, CHUNK):
        n = min(CHUNK, count - start)
        first = start * bits // 8  # chunks start on byte boundaries
        chunk = np.unpackbits(stream[first : first + packed_size(n, bits)], count=n * bits, bitorder="little")
        padded = np.zeros((n, 8), dtype=np.uint8)  # (n, 8): each value's bits, zero above bit b - 1
        padded[:, :bits] = chunk.reshape(n, bits)
        out[start : start + n] = np.packbits(padded, axis=1, bitorder="little").reshape(n)
    return out
