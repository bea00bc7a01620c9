"""Dense bit packing of integer codes: n codes of b bits take ceil(n * b / 8) bytes.

Layout (little-endian at both levels, like numpy's `bitorder="little"`): code i occupies bits
i*b ... i*b + b - 1 of the stream, least significant bit first, and stream bit k is bit k % 8 of
byte k // 8. At 4 bits two codes share a byte, the first in the low nibble: [1, 2] -> 0x21.
Codes are unsigned; signed codes (a symmetric QuantSpec's q in [qmin, qmax]) are stored as
q - qmin by passing `offset=qmin`, and `unpack` with the same offset adds it back.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError, DataError


def packed_size(count: int, bits: int) -> int:
    """Bytes that `count` codes of `bits` bits take: ceil(count * bits / 8)."""
    return -(-count * bits // 8)


def pack(q: torch.Tensor, bits: int, *, offset: int = 0) -> torch.Tensor:
    """The codes `q - offset` (flattened in row-major order) packed into a uint8 tensor.

    Every `q - offset` must lie in [0, 2^bits - 1].
    """
    _check_bits(bits)
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise DataError(f"pack takes integer codes, got a {q.dtype} tensor")
    codes = q.detach().reshape(-1).cpu().to(torch.int64) - offset
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2 ** bits):
        raise DataError(f"codes minus offset {offset} span [{int(codes.min())}, {int(codes.max())}], outside "
                        f"[0, {2 ** bits - 1}] of {bits} bits")
    stream = np.unpackbits(codes.numpy().astype(np.uint8)[:, None], axis=1, bitorder="little")[:, :bits]  # (n, b)
    return torch.from_numpy(np.packbits(stream.reshape(-1), bitorder="little"))


def unpack(data: torch.Tensor, bits: int, count: int, *, offset: int = 0) -> torch.Tensor:
    """The `count` codes packed in `data` by `pack`, plus `offset`: a 1-D int32 tensor."""
    _check_bits(bits)
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise DataError(f"unpack takes a 1-D uint8 tensor, got {data.dtype} of shape {tuple(data.shape)}")
    if count < 0 or data.numel() != packed_size(count, bits):
        raise DataError(f"{count} codes of {bits} bits take {packed_size(count, bits)} bytes, got {data.numel()}")
    stream = np.unpackbits(data.cpu().numpy(), count=count * bits, bitorder="little").reshape(count, bits)
    padded = np.zeros((count, 8), dtype=np.uint8)  # (n, 8): each code's bits, zero above bit b - 1
    padded[:, :bits] = stream
    codes = np.packbits(padded, axis=1, bitorder="little").reshape(count)
    return torch.from_numpy(codes.astype(np.int32)) + offset


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"packing takes 1..8 bits per code, got {bits!r}")
