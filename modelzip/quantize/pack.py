"""Dense bit packing of integer code tensors (the layout of `modelzip.codec.bitpack`: at 4 bits [1, 2] -> 0x21).

Codes are unsigned; signed codes (a symmetric QuantSpec's q in [qmin, qmax]) are stored as
q - qmin by passing `offset=qmin`, and `unpack` with the same offset adds it back.
"""
from __future__ import annotations

import numpy as np
import torch

from ..codec.bitpack import pack_bits, packed_size, unpack_bits
from ..errors import ConfigError, DataError


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
    return torch.from_numpy(np.frombuffer(pack_bits(codes.numpy(), bits), dtype=np.uint8).copy())


def unpack(data: torch.Tensor, bits: int, count: int, *, offset: int = 0) -> torch.Tensor:
    """The `count` codes packed in `data` by `pack`, plus `offset`: a 1-D int32 tensor."""
    _check_bits(bits)
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise DataError(f"unpack takes a 1-D uint8 tensor, got {data.dtype} of shape {tuple(data.shape)}")
    if count < 0 or data.numel() != packed_size(count, bits):
        raise DataError(f"{count} codes of {bits} bits take {packed_size(count, bits)} bytes, got {data.numel()}")
    codes = unpack_bits(data.cpu().numpy().tobytes(), bits, count)
    return torch.from_numpy(codes.astype(np.int32)) + offset


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"packing takes 1..8 bits per code, got {bits!r}")
