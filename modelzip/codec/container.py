"""The .mzip container: a checksummed JSON header followed by the tensors' byte sections.

Layout (all integers little-endian)::

    offset 0   magic            4 bytes  b"MZIP"
    offset 4   format version   uint16   (1)
    offset 6   header length    uint32   bytes of the compressed header that follows
    offset 10  header CRC-32    uint32   zlib.crc32 of those compressed bytes
    offset 14  header           zlib-compressed UTF-8 JSON (sort_keys, compact separators, level 9)
    then       sections         raw bytes, concatenated in the order the header lists them

The header JSON is ``{"meta": {...}, "tensors": {name: entry, ...}, "sections": [{"length": n,
"crc32": c}, ...]}``; each tensor entry (see `tensors.py`) adds ``"sections": [first, how_many]``.
JSON keys are sorted so the bytes are deterministic; the tensors' original order is the order of
their sections, which tile the section list without gaps. Nothing is pickled, so loading an
untrusted file runs no code, and every section carries its own CRC-32 so corruption is reported
with the tensor it hit.
"""

import json
import os
import re
import struct
import zlib
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import accumulate

import numpy as np

from modelzip.codec.tensors import SECTIONS, check_entry, decode_tensor, encode_tensor
from modelzip.errors import ChecksumError, ConfigError, FormatError, LimitError, TruncatedError

MAGIC = b"MZIP"
VERSION = 1
PREAMBLE = struct.Struct("<4sHII")  # magic, version, header length, header CRC-32: 14 bytes
MAX_HEADER = 64 << 20  # decompressed header bytes; a file claiming more is a zip bomb, not a model
HEADER_FLOOR, HEADER_RATIO = 1 << 20, 64  # see header_limit
MAX_DEPTH = 64  # JSON nesting: an arch record or recipe nests < 10 deep
DECODED_FLOOR, DECODED_RATIO = 256 << 20, 2000  # see decoded_cap
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')  # JSON strings, escapes included
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def dumps(tensors: Mapping[str, np.ndarray], meta: dict) -> bytes:
    """Encode named arrays (in order) and a JSON-able `meta` object into .mzip bytes."""
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    entries: dict[str, dict] = {}
    sections: list[bytes] = []
    for name, array in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, got {name!r}")
        entry, own = encode_tensor(array)
        entries[name] = {**entry, "sections": [len(sections), len(own)]}
        sections += own
    header = {
        "meta": meta,
        "tensors": entries,
        "sections": [{"length": len(s), "crc32": zlib.crc32(s)} for s in sections],
    }
    try:
        text = json.dumps(
            header, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta is not JSON-serialisable: {exc}") from exc
    packed = zlib.compress(text.encode("utf-8"), 9)
    preamble = PREAMBLE.pack(MAGIC, VERSION, len(packed), zlib.crc32(packed))
    return b"".join([preamble, packed, *sections])


def loads(data: bytes, *, max_decoded_bytes: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Check and decode .mzip bytes: (meta, {name: array}) with the tensors in their saved order.

    Every entry is checked against its section sizes and the arrays' total size against `max_decoded_bytes`
    (default `decoded_cap(len(data))`) before any section is hashed or decoded: LimitError if over.
    """
    view = memoryview(data)
    length, crc = _preamble(view[: PREAMBLE.size])
    header_end = PREAMBLE.size + length
    header, order = _header(view[PREAMBLE.size : header_end], length, crc)
    stops = list(accumulate((s["length"] for s in header["sections"]), initial=header_end))[1:]
    total = stops[-1] if stops else header_end
    if len(view) < total:
        where = _section_name(header, order, bisect_right(stops, len(view)))
        raise TruncatedError(f"file ends inside {where}: expected {total} bytes, found {len(view)}")
    if len(view) > total:
        raise FormatError(f"{len(view) - total} trailing byte(s) after the last section, at offset {total}")
    _check_decoded_size(header, order, len(view), max_decoded_bytes)
    chunks = []
    for index, (section, stop) in enumerate(zip(header["sections"], stops)):
        chunk = view[stop - section["length"] : stop]
        found = zlib.crc32(chunk)
        if found != section["crc32"]:
            where, recorded = _section_name(header, order, index), section["crc32"]
            raise ChecksumError(f"CRC-32 mismatch in {where}: recorded {recorded:#010x}, computed {found:#010x}")
        chunks.append(chunk)
    tensors = {}
    for name in order:
        first, count = header["tensors"][name]["sections"]
        with _naming(name):
            tensors[name] = decode_tensor(header["tensors"][name], chunks[first : first + count])
    return header["meta"], tensors


def decoded_cap(file_bytes: int) -> int:
    """The default limit on the bytes a file's arrays may decode to: max(256 MiB, 2000 x the file's size).

    Pruned and quantized models compress far less: measured on LeNet-300-100, LeNet-5 and 784-1200-1200-10
    with 1-bit codebooks, 108-123x at 97% pruning and 366-610x at 99.9%. A crafted file gains at most 2000x;
    the floor lets small files load whose constant or all-zero tensors (a fresh BatchNorm, a layer pruned
    away) compress without bound. A larger model more than 99.9% pruned may need the caller to raise it.
    """
    return max(DECODED_FLOOR, DECODED_RATIO * file_bytes)


def _check_decoded_size(header: dict, order: list[str], file_bytes: int, cap: int | None) -> None:
    """Check every entry from the header alone (`check_entry`) and the arrays' total size against the cap."""
    if cap is not None and not _uint(cap, 2**63):
        raise ConfigError(f"max_decoded_bytes must be a non-negative int or None, got {cap!r}")
    limit = decoded_cap(file_bytes) if cap is None else cap
    total = 0
    for name in order:
        entry = header["tensors"][name]
        first, count = entry["sections"]
        with _naming(name):
            layout = check_entry(entry, [s["length"] for s in header["sections"][first : first + count]])
        total += layout.nbytes
        if total > limit:
            why = (f"max_decoded_bytes={cap}" if cap is not None else
                   f"max({DECODED_FLOOR >> 20} MiB, {DECODED_RATIO} x the file's {file_bytes} bytes)")
            raise LimitError(f"tensor {name!r} ({layout.count} {layout.dtype.name} values) brings the decoded size "
                             f"to {total} bytes, over the limit of {limit} ({why}); if the file is trusted, pass a "
                             "larger max_decoded_bytes to modelzip.load / loads")


@contextmanager
def _naming(name: str) -> Iterator[None]:
    """Prefix a tensor's FormatError with its name (same class, so callers still catch what they expect)."""
    try:
        yield
    except FormatError as exc:
        raise type(exc)(f"tensor {name!r}: {exc}") from exc


def read_header(source: bytes | str | os.PathLike) -> dict:
    """The parsed, checked header alone (for `modelzip inspect`); reads only a file's first bytes."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            length, crc = _preamble(file.read(PREAMBLE.size))
            return _header(file.read(length), length, crc)[0]
    view = memoryview(source)
    length, crc = _preamble(view[: PREAMBLE.size])
    return _header(view[PREAMBLE.size : PREAMBLE.size + length], length, crc)[0]


def _preamble(prefix: bytes) -> tuple[int, int]:
    """Check magic and version; return the header's (length, CRC-32)."""
    magic = bytes(prefix[: len(MAGIC)])
    if magic != MAGIC[: len(magic)]:
        raise FormatError(f"not a .mzip file: starts with {magic!r}, expected {MAGIC!r}")
    if len(prefix) < PREAMBLE.size:
        found = len(prefix)
        raise TruncatedError(f"file ends inside the preamble: expected {PREAMBLE.size} bytes, found {found}")
    _, version, length, crc = PREAMBLE.unpack(prefix)
    if version != VERSION:
        raise FormatError(f"unsupported .mzip format version {version} (this reader knows {VERSION})")
    return length, crc


def _header(packed: bytes, length: int, crc: int) -> tuple[dict, list[str]]:
    """Check and parse the compressed header: (header, tensor names in file order).

    The zlib stream must be exactly one complete stream (adler-32 trailer included, nothing after it) and
    inflate to at most `header_limit(length)` bytes of JSON nested at most MAX_DEPTH deep.
    """
    if len(packed) < length:
        expected, found = PREAMBLE.size + length, PREAMBLE.size + len(packed)
        raise TruncatedError(f"file ends inside the header: expected {expected} bytes, found {found}")
    found_crc = zlib.crc32(packed)
    if found_crc != crc:
        raise ChecksumError(f"header CRC-32 mismatch: recorded {crc:#010x}, computed {found_crc:#010x}")
    limit = header_limit(length)
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(packed, limit)
    except zlib.error as exc:
        raise FormatError(f"header is not zlib-compressed UTF-8 JSON: {exc}") from exc
    if inflater.unconsumed_tail or (len(text) == limit and not inflater.eof):
        raise LimitError(f"header inflates to more than {limit} bytes from {length}; refusing to read it")
    if not inflater.eof:
        raise FormatError("header's zlib stream ends early (no end of stream or adler-32 trailer)")
    if inflater.unused_data:
        raise FormatError(f"{len(inflater.unused_data)} byte(s) after the header's zlib stream")
    depth = _nesting(text)
    if depth > MAX_DEPTH:
        raise LimitError(f"header JSON nests {depth} levels deep; the reader allows {MAX_DEPTH}")
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"header is not zlib-compressed UTF-8 JSON: {exc}") from exc
    return header, _check_header(header)


def header_limit(packed_bytes: int) -> int:
    """Bytes a header of `packed_bytes` may inflate to: max(1 MiB, 64x), at most MAX_HEADER.

    The most repetitive real header measured (3,000 identical BatchNorm layers) inflates 29x; a crafted one
    inflates 1000x, and parsing 60 MB of JSON costs 1.5 s and 320 MB, which no 60 kB file should.
    """
    return min(MAX_HEADER, max(HEADER_FLOOR, HEADER_RATIO * packed_bytes))


def _nesting(text: bytes) -> int:
    """How deep JSON arrays and objects nest (brackets outside strings), before `json.loads` recurses into them.

    Linear time, C-speed passes (strings removed, everything but brackets deleted), a bounded running sum."""
    brackets = _STRINGS.sub(b"", text).translate(_BRACKETS, _NOT_BRACKETS)
    steps = 92 - np.frombuffer(brackets, dtype=np.uint8).astype(np.int64)  # "[" is 91: +1, "]" is 93: -1
    deepest = level = 0
    for start in range(0, steps.size, 1 << 20):
        depth = np.cumsum(steps[start : start + (1 << 20)]) + level
        deepest, level = max(deepest, int(depth.max())), int(depth[-1])
    return deepest


def _check_header(header: object) -> list[str]:
    """Validate the header's structure; return the tensor names ordered by their sections."""
    if not isinstance(header, dict):
        raise FormatError(f"header must be a JSON object, found {type(header).__name__}")
    for key, kind in (("meta", dict), ("tensors", dict), ("sections", list)):
        if not isinstance(header.get(key), kind):
            found = f"{header.get(key)!r:.80}"
            raise FormatError(f"header key {key!r} must be a JSON {kind.__name__}, found {found}")
    for index, section in enumerate(header["sections"]):
        valid = isinstance(section, dict) and _uint(section.get("length"), 2**63)
        if not (valid and _uint(section.get("crc32"), 2**32)):
            raise FormatError(f"section {index} must be {{'length': uint, 'crc32': uint32}}, found {section!r:.80}")
    spans = {}
    for name, entry in header["tensors"].items():
        span = entry.get("sections") if isinstance(entry, dict) else None
        if not (isinstance(span, list) and len(span) == 2 and all(_uint(n, 2**63) for n in span)):
            found = f"{span!r:.80}"
            raise FormatError(f"tensor {name!r} must record 'sections': [first, how_many], found {found}")
        spans[name] = span
    order = sorted(spans, key=lambda name: spans[name][0])
    expected = 0
    for name in order:
        first, count = spans[name]
        if count == 0:
            raise FormatError(f"tensor {name!r} records no sections")
        if first != expected:
            raise FormatError(f"tensor {name!r} starts at section {first}, expected section {expected}")
        expected += count
    if expected != len(header["sections"]):
        raise FormatError(f"tensors use {expected} sections but the header lists {len(header['sections'])}")
    return order


def _uint(value: object, bound: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < bound


def _section_name(header: dict, order: list[str], index: int) -> str:
    """Name a section for an error message, e.g. "section 4 (index of tensor 'fc1.weight')"."""
    starts = [header["tensors"][name]["sections"][0] for name in order]  # ascending, from 0
    name = order[bisect_right(starts, index) - 1]
    entry = header["tensors"][name]
    encoding, offset = entry.get("encoding"), index - entry["sections"][0]
    roles = SECTIONS.get(encoding, ()) if isinstance(encoding, str) else ()
    role = roles[offset] if offset < len(roles) else f"section {offset + 1}"
    return f"section {index} ({role} of tensor {name!r})"
