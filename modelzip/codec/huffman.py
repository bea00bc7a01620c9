"""Canonical Huffman coding of byte symbols, stored as one raw DEFLATE block (RFC 1951).

Deep Compression (Han, Mao & Dally 2016, §4) Huffman-codes the quantized weight indices and the
sparse relative indices. We write each such stream as a single dynamic-Huffman DEFLATE block
(BFINAL=1, BTYPE=10) that uses only literals 0..255 and end-of-block (256): the code lengths of
our canonical code travel in the block's own header (§3.2.7), so the stream is self-describing and
decoding is `zlib` inflating at C speed rather than a Python bit loop. That is what lets a whole
model load within a small factor of `torch.load`.

The block declares HDIST=1 distance code of length 0 (no distance codes used): RFC 1951 requires
at least one distance code length in the header, and zlib accepts an all-zero distance code as
long as the data never refers to it (checked by the tests with plain `zlib.decompress`).
"""

import heapq
import zlib

import numpy as np

from modelzip.errors import FormatError

END_OF_BLOCK = 256
LITERALS = 257  # literal/length alphabet we use: bytes 0..255 plus end-of-block (HLIT = 257)
MAX_CODE_BITS = 15  # RFC 1951 §3.2.7: literal/length and distance codes
MAX_CL_BITS = 7  # code-length code lengths are 3-bit fields
CL_ORDER = np.array([16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15])  # §3.2.7


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_BITS) -> np.ndarray:
    """Optimal prefix-code lengths for symbol `counts`, none longer than `max_length` (uint8).

    Unused symbols get length 0 and a lone used symbol length 1 (DEFLATE allows exactly that one
    incomplete code). Plain Huffman (a heap) is optimal and almost always within the limit; when it
    is not, package-merge (Larmore & Hirschberg 1990) gives the optimal length-limited code.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.dtype.kind not in "iub" or (counts.size and counts.min() < 0):
        raise ValueError("counts must be a 1-D array of non-negative integers")
    lengths = np.zeros(counts.size, dtype=np.uint8)
    used = np.flatnonzero(counts)
    if used.size > 2**max_length:
        raise ValueError(f"{used.size} symbols cannot all get codes of at most {max_length} bits")
    if used.size == 1:
        lengths[used] = 1
    elif used.size > 1:
        weights = counts[used].astype(np.int64)
        depths = _huffman_depths(weights)
        lengths[used] = depths if depths.max() <= max_length else _package_merge(weights, max_length)
    return lengths


def _huffman_depths(weights: np.ndarray) -> np.ndarray:
    """Leaf depths of a Huffman tree (ties broken by node number, so the result is deterministic)."""
    leaves = weights.size
    heap = [(int(w), node) for node, w in enumerate(weights)]
    heapq.heapify(heap)
    parent = [0] * (2 * leaves - 1)
    for node in range(leaves, 2 * leaves - 1):  # each merge creates the next internal node
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (w1 + w2, node))
    depth = [0] * (2 * leaves - 1)
    for node in range(2 * leaves - 3, -1, -1):  # parents are numbered after their children
        depth[node] = depth[parent[node]] + 1
    return np.array(depth[:leaves])


def _package_merge(weights: np.ndarray, max_length: int) -> np.ndarray:
    """Optimal code lengths <= max_length by package-merge: the result is complete (Kraft sum 1).

    Every item carries how many times it contains each symbol (a row of `contents`); a symbol's
    code length is how often it occurs in the 2n-2 cheapest items of the final list.
    """
    n = weights.size
    order = np.argsort(weights, kind="stable")
    leaf_weights = weights[order]  # (n,) ascending
    leaf_contents = np.eye(n, dtype=np.int64)  # (n, n)
    item_weights, contents = leaf_weights, leaf_contents
    for _ in range(max_length - 1):
        pairs = item_weights.size // 2 * 2
        package_weights = item_weights[0:pairs:2] + item_weights[1:pairs:2]
        package_contents = contents[0:pairs:2] + contents[1:pairs:2]
        merged = np.concatenate([leaf_weights, package_weights])
        rank = np.argsort(merged, kind="stable")  # leaves first among equal weights
        item_weights = merged[rank]
        contents = np.concatenate([leaf_contents, package_contents])[rank]
    lengths = np.empty(n, dtype=np.int64)
    lengths[order] = contents[: 2 * n - 2].sum(axis=0)
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes for code `lengths` as in RFC 1951 §3.2.2 (uint32, 0 where unused).

    Codes of one length are consecutive in symbol order, and shorter codes precede longer ones
    lexicographically, so the lengths alone define the code.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and lengths.min() < 0:
        raise ValueError("code lengths must be non-negative")
    used = lengths > 0
    if np.sum(2.0 ** -lengths[used]) > 1:
        raise ValueError("code lengths are over-subscribed (Kraft sum > 1)")
    max_len = int(lengths.max(initial=0))
    bl_count = np.bincount(lengths[used], minlength=max_len + 1)
    next_code = np.zeros(max_len + 1, dtype=np.int64)
    code = 0
    for bits in range(1, max_len + 1):  # step 2 of §3.2.2
        code = (code + int(bl_count[bits - 1])) << 1
        next_code[bits] = code
    order = np.argsort(lengths, kind="stable")  # by length, then symbol
    sorted_lengths = lengths[order]
    rank = np.arange(lengths.size) - np.searchsorted(sorted_lengths, sorted_lengths)
    codes = np.zeros(lengths.size, dtype=np.uint32)
    codes[order] = next_code[sorted_lengths] + rank
    codes[~used] = 0
    return codes


def _reversed_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes bit-reversed: DEFLATE sends a Huffman code's most significant bit first
    into an LSB-first bit stream (RFC 1951 §3.1.1), so LSB-first packing needs them reversed."""
    codes = canonical_codes(lengths).astype(np.int64)
    lengths = lengths.astype(np.int64)
    out = np.zeros_like(codes)
    for bit in range(int(lengths.max(initial=0))):  # loop over bit positions, not symbols
        out |= np.where(bit < lengths, ((codes >> bit) & 1) << np.maximum(lengths - 1 - bit, 0), 0)
    return out


CHUNK = 1 << 18  # symbols packed per step: bounds the int64 temporaries to a few MB


def _scatter_bits(out: np.ndarray, values: np.ndarray, widths: np.ndarray, bit: int) -> int:
    """OR each value's `width` (<= 16) low bits into `out`, LSB-first from stream bit `bit`, fields
    back to back (RFC 1951 §3.1.1); returns the bit after the last field.

    A field shifted to its bit offset spans at most 3 bytes; fields never share a bit, so OR-ing
    their bytes together is a sum, and one `np.bincount` scatters a chunk in O(fields) memory.
    """
    values = values.astype(np.int64)  # (n,)
    widths = widths.astype(np.int64)  # (n,)
    starts = bit + np.cumsum(widths) - widths  # (n,) first stream bit of each field
    first = starts >> 3
    base = bit >> 3
    shifted = values << (starts & 7)  # (n,) < 2**23
    index = np.concatenate([first, first + 1, first + 2]) - base  # (3n,)
    parts = np.concatenate([shifted & 0xFF, (shifted >> 8) & 0xFF, shifted >> 16])  # (3n,)
    packed = np.bincount(index, weights=parts).astype(np.uint8)  # exact: every sum < 256
    span = min(packed.size, out.size - base)
    out[base : base + span] += packed[:span]  # the bits beyond the stream are zero
    return bit + int(widths.sum())


def _run_length(sequence: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Code-length sequence -> (code-length symbols, extra-bit values, extra-bit widths), §3.2.7.

    Runs of zeros use 17 (3-10) and 18 (11-138); other runs send the length once and repeat it
    with 16 (3-6 copies). The loop runs over runs of at most 258 lengths.
    """
    symbols: list[int] = []
    extra: list[int] = []
    widths: list[int] = []

    def emit(symbol: int, value: int = 0, width: int = 0) -> None:
        symbols.append(symbol)
        extra.append(value)
        widths.append(width)

    starts = np.flatnonzero(np.diff(sequence, prepend=-1))
    runs = np.diff(np.append(starts, sequence.size))
    for length, run in zip(sequence[starts].tolist(), runs.tolist()):
        if length == 0:
            while run >= 11:
                step = min(run, 138)
                emit(18, step - 11, 7)
                run -= step
            if run >= 3:
                emit(17, run - 3, 3)
                run = 0
        else:
            emit(length)
            run -= 1
            while run >= 3:
                step = min(run, 6)
                emit(16, step - 3, 2)
                run -= step
        for _ in range(run):
            emit(length)
    return np.array(symbols), np.array(extra), np.array(widths)


def _block(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The block's header fields for literal `counts` (257, end-of-block included): (values,
    widths, literal codes bit-reversed, literal code lengths). The code follows from the counts
    alone, so the stream's exact size does too (`encoded_size`)."""
    lit_lengths = code_lengths(counts, MAX_CODE_BITS).astype(np.int64)  # (257,)
    lit_codes = _reversed_codes(lit_lengths)

    # Code lengths of the 257 literal/length codes and of the one (unused) distance code.
    cl_symbols, cl_extra, cl_extra_widths = _run_length(np.append(lit_lengths, 0))
    # At least 2 code-length symbols occur (EOB's non-zero length; 0, 17 or 18 for the distance
    # code's 0), so the code-length code is complete, as zlib requires of it.
    cl_lengths = code_lengths(np.bincount(cl_symbols, minlength=19), MAX_CL_BITS).astype(np.int64)
    cl_codes = _reversed_codes(cl_lengths)
    hclen = max(4, int(np.flatnonzero(cl_lengths[CL_ORDER]).max()) + 1)

    # (value, width): BFINAL=1, BTYPE=10 (dynamic), HLIT-257=0, HDIST-1=0, HCLEN-4 (§3.2.3, §3.2.7)
    header = np.array([[1, 1], [0b10, 2], [0, 5], [0, 5], [hclen - 4, 4]])
    fields = [
        (header[:, 0], header[:, 1]),
        (cl_lengths[CL_ORDER[:hclen]], np.full(hclen, 3)),
        (  # each code-length symbol followed by its extra bits
            np.column_stack([cl_codes[cl_symbols], cl_extra]).ravel(),
            np.column_stack([cl_lengths[cl_symbols], cl_extra_widths]).ravel(),
        ),
    ]
    values, widths = (np.concatenate(part) for part in zip(*fields))
    return values, widths, lit_codes, lit_lengths


def symbol_counts(symbols: np.ndarray, repeats: np.ndarray | None = None) -> np.ndarray:
    """Occurrences of each byte symbol plus the one end-of-block: the counts a stream is coded for.

    `repeats` (one per symbol) counts each symbol that many times: the counts of a histogram."""
    counts = np.bincount(symbols, weights=repeats, minlength=LITERALS).astype(np.int64)
    counts[END_OF_BLOCK] += 1
    return counts


def encoded_size(counts: np.ndarray) -> int:
    """Exact bytes `encode` writes for symbols with these `counts` (`symbol_counts`), without encoding:
    lets the tensor encoder price every candidate and encode only the smallest."""
    _, widths, _, lit_lengths = _block(counts)
    return _stream_bytes(counts, widths, lit_lengths)


def _stream_bytes(counts: np.ndarray, header_widths: np.ndarray, lit_lengths: np.ndarray) -> int:
    """Bytes of the block: its header's bits plus every symbol's (end-of-block included) code length."""
    return (int(header_widths.sum()) + int(np.dot(counts, lit_lengths)) + 7) // 8


def encode(symbols: np.ndarray) -> bytes:
    """Huffman-code byte symbols (ints in [0, 255]) as one raw dynamic-Huffman DEFLATE block."""
    symbols = np.asarray(symbols)
    if symbols.dtype.kind not in "iub":
        raise ValueError(f"symbols must be integers, got dtype {symbols.dtype}")
    symbols = symbols.ravel()  # (n,)
    if symbols.size and (symbols.min() < 0 or symbols.max() > 255):
        raise ValueError("symbols must lie in [0, 255]")
    if symbols.dtype != np.uint8:
        symbols = symbols.astype(np.uint8)
    counts = symbol_counts(symbols)
    values, widths, lit_codes, lit_lengths = _block(counts)
    out = np.zeros(_stream_bytes(counts, widths, lit_lengths), dtype=np.uint8)
    bit = _scatter_bits(out, values, widths, 0)
    for start in range(0, symbols.size, CHUNK):
        chunk = symbols[start : start + CHUNK]
        bit = _scatter_bits(out, lit_codes[chunk], lit_lengths[chunk], bit)
    _scatter_bits(out, lit_codes[[END_OF_BLOCK]], lit_lengths[[END_OF_BLOCK]], bit)
    return out.tobytes()


def decode(data: bytes, count: int) -> np.ndarray:
    """Inflate a stream written by `encode` back into its `count` symbols (read-only uint8 array).

    Raises FormatError if zlib rejects the stream, or it ends early, holds another number of
    symbols, or has bytes after its final block. Output is capped at count + 1 bytes, so a corrupt
    stream cannot make us allocate more than that.
    """
    inflater = zlib.decompressobj(wbits=-15)
    try:
        out = inflater.decompress(data, count + 1)
    except zlib.error as exc:
        raise FormatError(f"invalid Huffman stream: {exc}") from None
    if len(out) > count:
        raise FormatError(f"Huffman stream holds more than the expected {count} symbols")
    if not inflater.eof:
        raise FormatError(f"Huffman stream ends early: {len(out)} of {count} symbols, no end-of-block")
    if len(out) != count:
        raise FormatError(f"Huffman stream holds {len(out)} symbols, expected {count}")
    if inflater.unused_data:
        raise FormatError(f"{len(inflater.unused_data)} trailing byte(s) after the Huffman stream")
    return np.frombuffer(out, dtype=np.uint8)


def entropy_bits(symbols: np.ndarray) -> float:
    """n x the empirical Shannon entropy of `symbols` (non-negative ints): the bits an ideal
    entropy coder would need, the yardstick for Huffman coding's overhead."""
    counts = np.bincount(np.asarray(symbols).ravel().astype(np.intp))
    counts = counts[counts > 0]
    return float((counts * np.log2(counts.sum() / counts)).sum())
