"""The .mzip codec: canonical Huffman coding, relative sparse indices, per-tensor encodings and
the checksummed container that holds them (Deep Compression, Han, Mao & Dally 2016)."""

from modelzip.codec.container import decoded_cap, dumps, loads, read_header
from modelzip.codec.huffman import canonical_codes, code_lengths, decode, encode, entropy_bits
from modelzip.codec.sparse import absolute_positions, relative_indices
from modelzip.codec.tensors import decode_tensor, encode_tensor

__all__ = [
    "absolute_positions",
    "canonical_codes",
    "code_lengths",
    "decode",
    "decoded_cap",
    "decode_tensor",
    "dumps",
    "encode",
    "encode_tensor",
    "entropy_bits",
    "loads",
    "read_header",
    "relative_indices",
]
