"""Dense bit packing: the documented layout, and streams longer than one packing chunk."""

import numpy as np
import pytest

from modelzip.codec.bitpack import CHUNK, pack_bits, packed_size, unpack_bits


def test_layout_low_nibble_first():
    assert pack_bits(np.array([1, 2]), 4) == b"\x21"
    assert pack_bits(np.array([1, 0, 1]), 1) == b"\x05"


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_round_trip_across_chunks(bits):
    values = np.random.default_rng(bits).integers(0, 2**bits, CHUNK + 13).astype(np.uint8)
    data = pack_bits(values, bits)
    assert len(data) == packed_size(values.size, bits)
    assert np.array_equal(unpack_bits(data, bits, values.size), values)
    whole = np.packbits(np.unpackbits(values[:, None], axis=1, bitorder="little")[:, :bits].reshape(-1),
                        bitorder="little").tobytes()
    assert data == whole  # chunking changes nothing
