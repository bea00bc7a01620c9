"""Per-tensor encodings: each tensor becomes a JSON-able entry plus a few byte sections.

The encoder tries every encoding that applies and keeps the smallest, so a pruned and quantized
weight matrix gets Deep Compression's full pipeline (Han et al. 2016: codebook + Huffman-coded
indices + relative sparse indices) while a small random bias simply stays raw.

    encoding     sections (in order)                    applies to
    raw          raw                                    every supported dtype
    dense        codebook, value (Huffman indices)      float, <= 256 distinct bit patterns
    sparse       codebook, index (Huffman gaps), value  as dense, and contains +0.0
    sparse-raw   index (Huffman gaps), value (raw)      float containing +0.0
    dense-packed codebook, value (bit-packed indices)       as dense

dense-packed stores each index in ceil(log2 codebook_size) bits (modelzip.codec.bitpack): a binary
weight takes 1 bit, a constant tensor 0. Huffman coding wins when the indices are peaked (the codes of
a bell-shaped weight); it cannot go below 1 bit a symbol and pays for DEFLATE's end-of-block code,
so a flat or tiny alphabet is cheaper packed. Integer tensors (the codes of uniformly quantized
layers) try the same encodings as floats, so int4 codes are stored at 4 bits or fewer.

Values are compared by bit pattern, never by float equality, so -0.0 and +0.0 (and NaN payloads)
stay distinct and every round trip is bit-exact. "Zero" below always means the +0.0 pattern.
The codebook is sorted by bit pattern, which puts +0.0 (all zero bits) at index 0.
"""

import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from modelzip.codec import huffman
from modelzip.codec.bitpack import pack_bits, packed_size, unpack_bits
from modelzip.codec.sparse import absolute_positions, gap_layout
from modelzip.errors import FormatError

SECTIONS: dict[str, tuple[str, ...]] = {
    "raw": ("raw",),
    "dense": ("codebook", "value"),
    "sparse": ("codebook", "index", "value"),
    "sparse-raw": ("index", "value"),
    "dense-packed": ("codebook", "value"),
}
"""Section roles of each encoding; the entry records each section's size as `<role>_bytes`."""

DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
    + ["float16", "float32", "float64", "complex64", "complex128"]
)
MAX_CODEBOOK = 256  # codebook indices are Huffman-coded as bytes
MAX_DIMS = 32  # numpy allows 64 dimensions; a weight has a handful
INDEX_BITS = range(1, 9)  # the paper fixes 5 (fc) or 8 (conv); searching is cheap and never worse
SAMPLE = 1 << 16  # values whose distinct count rejects a codebook before a full pass
CHUNK = 1 << 20  # values looked up in the codebook per step (bounds the int64 temporaries)

Entry = dict
Candidate = tuple[Entry, list[bytes]]
Plan = tuple[Entry, Callable[[], list[bytes]]]
"""An encoding priced exactly (the entry records its section sizes) and the call that builds it."""


def encode_tensor(array: np.ndarray) -> Candidate:
    """Encode `array` with the encoding that gives the fewest bytes: (entry, sections).

    Every candidate is priced from symbol counts (`priced_encodings`); only the winner is encoded.
    """
    entry, build = min(priced_encodings(array), key=lambda plan: _cost(plan[0]))
    return entry, build()


def priced_encodings(array: np.ndarray) -> list[Plan]:
    """Every encoding that applies to `array`, in a fixed order (ties go to the first), each with
    its exact entry and the call that builds its sections."""
    array = np.asarray(array)
    if array.dtype.name not in DTYPES:
        raise ValueError(f"unsupported dtype {array.dtype} (supported: {', '.join(sorted(DTYPES))})")
    flat = np.ascontiguousarray(array.reshape(-1), dtype=array.dtype.newbyteorder("<"))  # (count,)
    quantizable = flat.dtype.kind in "fiub"
    patterns = flat.view(f"<u{flat.itemsize}") if quantizable else None  # (count,) bit patterns
    if quantizable:
        nonzero = patterns != 0
    else:
        nonzero = flat.view(np.uint8).reshape(flat.size, flat.itemsize).any(axis=1)
    nnz = int(np.count_nonzero(nonzero))
    base = {"dtype": array.dtype.name, "shape": list(array.shape), "count": flat.size, "nonzero": nnz}
    plans = [_plan(base, "raw", [flat.nbytes], lambda: [flat.tobytes()])]
    if quantizable and flat.size:
        positions = np.flatnonzero(nonzero) if nnz < flat.size else None  # None: +0.0 never occurs
        del nonzero
        prices = _gap_prices(positions) if positions is not None else []
        plans += _quantized(base, patterns, positions, prices)
        if flat.dtype.kind == "f" and _sparse_raw_may_win(base, flat.itemsize):
            plans.append(_sparse_raw(base, flat, positions, prices))
    return plans


def _plan(base: Entry, encoding: str, sizes: list[int], build: Callable[[], list[bytes]], **fields: int) -> Plan:
    lengths = {f"{role}_bytes": size for role, size in zip(SECTIONS[encoding], sizes)}
    return {"encoding": encoding, **base, **fields, **lengths}, build


def _cost(entry: Entry) -> int:
    """Bytes the encoding adds to the file: its sections plus (uncompressed) JSON entry."""
    sections = sum(entry[f"{role}_bytes"] for role in SECTIONS[entry["encoding"]])
    return sections + len(json.dumps(entry, separators=(",", ":")))


def _quantized(base: Entry, patterns: np.ndarray, positions: np.ndarray | None,
               prices: list[tuple[int, int, int]]) -> list[Plan]:
    """Dense and (if +0.0 occurs) sparse codebook encodings, when <= 256 distinct patterns."""
    has_zero = positions is not None
    values = patterns[positions] if has_zero else patterns  # (nonzero,) or (count,)
    found = _codebook(values, MAX_CODEBOOK - has_zero)
    if found is None:
        return []
    codebook, inverse = found  # inverse: (values,) uint8
    if has_zero:  # sorted by bit pattern, +0.0 first
        codebook = np.concatenate([np.zeros(1, codebook.dtype), codebook])
        inverse += 1
    count, bits = base["count"], (codebook.size - 1).bit_length()
    fields = {"codebook_size": codebook.size, "value_bits_fixed": bits}
    codebook_bytes = codebook.tobytes()  # the bit patterns' bytes are the values' bytes
    value_counts = huffman.symbol_counts(inverse)
    dense_counts = value_counts.copy()
    dense_counts[0] += count - values.size  # the zeros

    def indices() -> np.ndarray:  # (count,) codebook index of every element
        return inverse if not has_zero else _place(inverse, positions, count)

    dense = _plan(base, "dense", [codebook.nbytes, huffman.encoded_size(dense_counts)],
                  lambda: [codebook_bytes, huffman.encode(indices())], **fields)
    packed = _plan(base, "dense-packed", [codebook.nbytes, packed_size(count, bits)],
                   lambda: [codebook_bytes, pack_bits(indices(), bits)], **fields)
    if not has_zero:
        return [dense, packed]

    def value_bytes(fillers: int) -> int:  # fillers store index 0, +0.0
        counts = value_counts.copy()
        counts[0] += fillers
        return huffman.encoded_size(counts)

    sparse = _best_sparse(
        base, "sparse", positions, prices, fields, [codebook.nbytes], value_bytes,
        lambda gaps, real: [codebook_bytes, huffman.encode(gaps), huffman.encode(_place(inverse, real, gaps.size))],
    )  # fmt: skip
    return [dense, packed, sparse]


def _codebook(values: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The sorted distinct `values` and each value's index (uint8), or None if more than `limit`.

    A strided sample rejects a tensor of many distinct values (a float layer) at once; otherwise
    chunked binary searches in the sample's codebook find every index, and values the sample
    missed are added for a second pass. No full sort, no int64 array of the tensor's size.
    """
    book = np.unique(values[:: max(1, values.size // SAMPLE)])
    inverse = np.empty(values.size, dtype=np.uint8)
    while book.size <= limit:
        missed = book[:0]
        for start in range(0, values.size, CHUNK):
            chunk = values[start : start + CHUNK]
            index = np.minimum(np.searchsorted(book, chunk), book.size - 1)
            miss = book[index] != chunk
            if miss.any():
                missed = np.union1d(missed, chunk[miss])
                if book.size + missed.size > limit:
                    return None
            inverse[start : start + CHUNK] = index
        if not missed.size:
            return book, inverse
        book = np.union1d(book, missed)
    return None


def _place(values: np.ndarray, at: np.ndarray, size: int) -> np.ndarray:
    """`size` zeros with `values` written at positions `at`."""
    out = np.zeros(size, dtype=values.dtype)
    out[at] = values
    return out


def _sparse_raw_may_win(base: Entry, itemsize: int) -> bool:
    """Whether sparse-raw applies (+0.0 occurs) and can beat raw: every stored value costs its
    bytes plus at least one Huffman-coded gap bit. Skips a hopeless index-width search."""
    has_zero = base["nonzero"] < base["count"]
    return has_zero and base["nonzero"] * (itemsize + 1 / 8) < base["count"] * itemsize


def _sparse_raw(base: Entry, flat: np.ndarray, positions: np.ndarray, prices: list[tuple[int, int, int]]) -> Plan:
    """Pruned but not quantized: Huffman-coded gaps plus the entries' raw values."""
    return _best_sparse(
        base, "sparse-raw", positions, prices, {}, [], lambda fillers: (positions.size + fillers) * flat.itemsize,
        lambda gaps, real: [huffman.encode(gaps), _place(flat[positions], real, gaps.size).tobytes()],
    )  # fmt: skip


def _gap_prices(positions: np.ndarray) -> list[tuple[int, int, int]]:
    """(index_bits, fillers, index section bytes) of every gap width, from the run lengths alone.

    Width b stores a run of r zeros as r >> b fillers (gap 2^b - 1 each) and one gap r & (2^b - 1).
    When runs are short (the usual case) their histogram prices each width in O(longest run);
    otherwise each width costs O(nonzero).
    """
    skipped = np.diff(positions, prepend=-1) - 1  # (nonzero,) zeros before each non-zero
    if skipped.size and skipped.max() <= 4 * skipped.size:
        runs = np.bincount(skipped)  # runs[r]: how many runs of r zeros
        lengths = np.flatnonzero(runs)
        runs = runs[lengths]
    else:
        lengths, runs = skipped, None
    prices = []
    for index_bits in INDEX_BITS:
        span = 1 << index_bits
        fillers = int(np.dot(lengths >> index_bits, runs) if runs is not None else (lengths >> index_bits).sum())
        gap_counts = huffman.symbol_counts(lengths & (span - 1), runs)
        gap_counts[span - 1] += fillers
        prices.append((index_bits, fillers, huffman.encoded_size(gap_counts)))
    return prices


def _best_sparse(
    base: Entry,
    encoding: str,
    positions: np.ndarray,
    prices: list[tuple[int, int, int]],
    fields: dict[str, int],
    leading: list[int],
    value_bytes: Callable[[int], int],
    build: Callable[[np.ndarray, np.ndarray], list[bytes]],
) -> Plan:
    """The cheapest gap width (`prices` from `_gap_prices`) for this encoding.

    `leading` are the sizes of the sections before the index (the codebook), `value_bytes` the
    value section's size given the number of fillers, `build` the sections from `gap_layout`.
    """
    options = []
    for index_bits, fillers, index_bytes in prices:
        sizes = [*leading, index_bytes, value_bytes(fillers)]
        counts = {"index_bits": index_bits, "entries": positions.size + fillers, "fillers": fillers}
        options.append(_plan(base, encoding, sizes, lambda b=index_bits: build(*gap_layout(positions, b)),
                             **fields, **counts))
    return min(options, key=lambda plan: _cost(plan[0]))


class Layout(NamedTuple):
    """What a checked entry decodes to: `count` elements of `dtype`, shaped `shape`."""

    encoding: str
    dtype: np.dtype
    shape: tuple[int, ...]
    count: int

    @property
    def nbytes(self) -> int:
        """Memory the decoded array takes: what the container's decoded-size cap adds up."""
        return self.count * self.dtype.itemsize


def check_entry(entry: object, sizes: Sequence[int]) -> Layout:
    """Check an entry against its sections' byte sizes, from the header alone: nothing is decoded or allocated.

    Every element count must be one its sections can hold, so no decoder allocates more than its input
    accounts for: raw values (raw, sparse-raw) take exactly their bytes, bit-packed indices ceil(n * bits / 8)
    bytes, and a Huffman stream spends at least one bit on each symbol and on its end-of-block code, so it
    holds fewer than 8 symbols a byte (DEFLATE's back-references could expand a crafted stream 1032:1; this
    bound leaves them no room). Only the zeros of a sparse or constant (0-bit packed) tensor cost no bytes:
    the container's decoded-size cap bounds those.
    """
    if not isinstance(entry, dict):
        raise FormatError(f"tensor entry must be a JSON object, found {type(entry).__name__}")
    encoding = entry.get("encoding")
    if not isinstance(encoding, str) or encoding not in SECTIONS:
        raise FormatError(f"unknown tensor encoding {encoding!r} (known: {', '.join(SECTIONS)})")
    name = entry.get("dtype")
    if not isinstance(name, str) or name not in DTYPES:
        raise FormatError(f"unsupported dtype {name!r} in tensor entry")
    dtype = np.dtype(name)
    shape = entry.get("shape")
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(_is_int(d) and d >= 0 for d in shape)):
        raise FormatError(f"tensor shape must be a list of non-negative ints (at most {MAX_DIMS}), found {shape!r:.80}")
    count = _field(entry, "count", high=sys.maxsize // dtype.itemsize)
    if math.prod(shape) != count:
        raise FormatError(f"tensor shape {shape} has {math.prod(shape)} elements but count is {count}")
    roles = SECTIONS[encoding]
    if len(sizes) != len(roles):
        needs = f"{len(roles)} sections ({', '.join(roles)})"
        raise FormatError(f"{encoding} tensor needs {needs}, got {len(sizes)}")
    for role, size in zip(roles, sizes):
        if _field(entry, f"{role}_bytes") != size:
            raise FormatError(f"{role} section is {size} bytes, entry says {entry[f'{role}_bytes']}")
    size = dict(zip(roles, sizes))
    stored = _field(entry, "entries", high=count) if "index" in size else count  # values the last section holds
    if "codebook" in size:
        _holds_values(size["codebook"], _field(entry, "codebook_size", 1, MAX_CODEBOOK), dtype, "codebook")
    if "index" in size:
        _holds_symbols(size["index"], stored, "index section")
    if encoding == "dense-packed":
        bits = (entry["codebook_size"] - 1).bit_length()
        if size["value"] != packed_size(count, bits):
            raise FormatError(f"value section is {size['value']} bytes, {count} indices of {bits} bits "
                              f"need {packed_size(count, bits)}")
    elif "codebook" in size:  # dense, sparse: Huffman-coded codebook indices
        _holds_symbols(size["value"], stored, "value section")
    else:  # raw, sparse-raw
        _holds_values(size[roles[-1]], stored, dtype, f"{roles[-1]} section")
    return Layout(encoding, dtype, tuple(shape), count)


def _holds_values(size: int, count: int, dtype: np.dtype, what: str) -> None:
    if size != count * dtype.itemsize:
        raise FormatError(f"{what} is {size} bytes, {count} {dtype.name} values need {count * dtype.itemsize}")


def _holds_symbols(size: int, count: int, what: str) -> None:
    if count >= 8 * size:
        raise FormatError(f"{what} of {size} bytes cannot hold {count} Huffman-coded symbols "
                          "(each symbol and the end-of-block code take at least one bit)")


def decode_tensor(entry: Entry, sections: list[bytes]) -> np.ndarray:
    """Rebuild the exact array (dtype, shape, bits) from an entry and its sections.

    Checks everything the decoders rely on first (`check_entry`), so bad input raises FormatError, never an
    IndexError, a silently wrong shape or an allocation its bytes do not account for. Extra entry keys (e.g.
    the container's) are ignored.
    """
    layout = check_entry(entry, [len(s) for s in sections])
    decode = _DECODERS[layout.encoding]
    flat = decode(entry, dict(zip(SECTIONS[layout.encoding], sections)), layout.dtype, layout.count)  # (count,)
    return flat.reshape(layout.shape)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field(entry: Entry, key: str, low: int = 0, high: int = sys.maxsize) -> int:
    value = entry.get(key)
    if not _is_int(value) or not low <= value <= high:
        raise FormatError(f"tensor entry key {key!r} must be an int in [{low}, {high}], found {value!r:.80}")
    return value


def _values(section: bytes, dtype: np.dtype) -> np.ndarray:
    """A section's little-endian values (its size checked by `check_entry`), as a new native-order array."""
    return np.frombuffer(section, dtype=dtype.newbyteorder("<")).astype(dtype)


def _codebook_lookup(entry: Entry, sections: dict[str, bytes], dtype: np.dtype, count: int) -> np.ndarray:
    """Decode `count` codebook indices (bit-packed or Huffman-coded) and look their values up."""
    size = entry["codebook_size"]
    codebook = _values(sections["codebook"], dtype)  # (size,)
    if entry["encoding"] == "dense-packed":
        indices = unpack_bits(sections["value"], (size - 1).bit_length(), count)  # (count,) uint8
    else:
        indices = huffman.decode(sections["value"], count)  # (count,) uint8
    if count and int(indices.max()) >= size:
        raise FormatError(f"codebook index {int(indices.max())} out of range for a codebook of {size}")
    return codebook[indices]


def _decode_raw(entry: Entry, sections: dict[str, bytes], dtype: np.dtype, count: int) -> np.ndarray:
    return _values(sections["raw"], dtype)


def _decode_sparse(entry: Entry, sections: dict[str, bytes], dtype: np.dtype, count: int) -> np.ndarray:
    entries = entry["entries"]
    if entry["encoding"] == "sparse":
        values = _codebook_lookup(entry, sections, dtype, entries)
    else:
        values = _values(sections["value"], dtype)
    positions = absolute_positions(huffman.decode(sections["index"], entries))  # (entries,)
    if entries and positions[-1] >= count:
        raise FormatError(f"sparse indices reach position {positions[-1]} in a tensor of {count} elements")
    out = np.zeros(count, dtype=dtype)
    out[positions] = values
    return out


_DECODERS = {
    "raw": _decode_raw,
    "dense": _codebook_lookup,
    "sparse": _decode_sparse,
    "sparse-raw": _decode_sparse,
    "dense-packed": _codebook_lookup,
}
