import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modelzip.errors import ConfigError, DataError
from modelzip.quantize.pack import pack, packed_size, unpack
from modelzip.quantize.uniform import QuantSpec, qparams, qrange, quantize


def test_bytes_by_hand():
    assert pack(torch.tensor([1, 2]), 4).tolist() == [0x21]  # low nibble first
    assert pack(torch.tensor([1, 2, 3]), 4).tolist() == [0x21, 0x03]
    # 3 bits, least significant first: stream 100 010 110 -> 0b11010001 = 0xD1, then one bit 0
    assert pack(torch.tensor([1, 2, 3]), 3).tolist() == [0xD1, 0x00]
    assert pack(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1).tolist() == [0x0D, 0x01]
    assert pack(torch.tensor([255, 7]), 8).dtype == torch.uint8


def test_four_bits_round_trip_in_half_the_bytes():
    for n in range(0, 18):
        q = torch.randint(0, 16, (n,))
        data = pack(q, 4)
        assert data.numel() == (n + 1) // 2 == packed_size(n, 4)
        assert torch.equal(unpack(data, 4, n), q.to(torch.int32))


@given(st.integers(1, 8).flatmap(lambda b: st.tuples(st.just(b), st.lists(st.integers(0, 2 ** b - 1), max_size=70))))
def test_every_width_round_trips(case):
    bits, values = case
    data = pack(torch.tensor(values, dtype=torch.int64), bits)
    assert data.numel() == -(-len(values) * bits // 8)
    assert unpack(data, bits, len(values)).tolist() == values


def test_signed_codes_are_stored_offset_by_qmin():
    spec = QuantSpec(4)
    qmin = qrange(spec)[0]
    assert pack(torch.tensor([-7, 7]), 4, offset=qmin).tolist() == [0xE0]  # stored 0 and 14
    w = torch.randn(3, 5)
    q = quantize(w, *qparams(w, spec), spec)
    assert torch.equal(unpack(pack(q, 4, offset=qmin), 4, q.numel(), offset=qmin).view_as(q), q)


def test_bad_input():
    with pytest.raises(DataError, match=r"\[0, 16\]"):
        pack(torch.tensor([0, 16]), 4)
    with pytest.raises(DataError, match=r"\[-1, 0\]"):
        pack(torch.tensor([-1, 0]), 4)
    with pytest.raises(DataError, match="integer codes"):
        pack(torch.tensor([0.5]), 4)
    for bits in (0, 9):
        with pytest.raises(ConfigError, match="1..8 bits"):
            pack(torch.tensor([0]), bits)
    with pytest.raises(DataError, match="take 2 bytes, got 1"):
        unpack(torch.tensor([0x21], dtype=torch.uint8), 4, 3)
    with pytest.raises(DataError, match="uint8"):
        unpack(torch.tensor([1]), 4, 2)
