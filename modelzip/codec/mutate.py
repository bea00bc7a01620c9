"""Mutations of .mzip bytes for fuzzing readers: the property test of the default suite and benchmarks/fuzz.py.

A reader must refuse every damaged file with a modelzip error and load no corruption. Blind mutations (byte
and bit flips, truncations, splices) test the checksums; structure-aware ones recompute the CRC-32s, so they
reach what lies behind them: a section's bytes changed (`section`) or a header JSON field replaced, removed or
added (`header`), with values chosen to break decoders and builders (sizes near 2^31, 2^40 and 2^63, wrong
types, other dtype and op names, deep nesting). Each mutation is a function of (data, rng, donor), where the
donor is another valid file to splice from, returning the mutated bytes and a one-line description.
"""
from __future__ import annotations

import json
import random
import struct
import zlib
from collections.abc import Callable
from typing import Any

from modelzip.codec.container import MAGIC, PREAMBLE, VERSION
from modelzip.codec.tensors import DTYPES, SECTIONS

Mutation = Callable[[bytes, random.Random, bytes], tuple[bytes, str]]

_BIG = [2**31 - 1, 2**31, 2**32, 2**40, 2**53, 2**63 - 1, 2**63, 2**64, 10**30]
_VALUES: list[Any] = [0, 1, -1, 2, 3, 7, 8, 9, 255, 256, 257, -(2**63), *_BIG, 0.5, -0.0, 1e308, True, False, None,
                      float("nan"), float("inf"), "", "x", "0", "fc1", "fc1.weight", [], [0], [1, 2], [-1], [2**40, 2**40], [0] * 64, {}, {"a": 1},
                      {"op": "resize"}]
_NAMES = [*sorted(DTYPES), *SECTIONS, "resize", "factorize", "hash", "quantize", "fold-bn", "uniform", "pq",
          "lenet-5", "lenet-300-100", "mlp-8", "vgg-bn", "relu", "lma", "torch.nn:Identity", "os:system", "buckets",
          "product", "weight", "bias", "codes", "scale", "zero_point", "forward", "in_features", "groups"]


def split(data: bytes) -> tuple[dict, list[bytes]]:
    """The header JSON and the section bytes of a valid file (no checks: the caller made the file)."""
    length = struct.unpack_from("<I", data, 6)[0]
    header = json.loads(zlib.decompress(data[PREAMBLE.size : PREAMBLE.size + length]))
    sections, offset = [], PREAMBLE.size + length
    for section in header["sections"]:
        sections.append(data[offset : offset + section["length"]])
        offset += section["length"]
    return header, sections


def join(header: dict, sections: list[bytes], *, sized: bool = True) -> bytes:
    """Bytes of a file with this header and sections: the header's CRC-32 recomputed and, if `sized`, the
    length and CRC-32 the header records for each section."""
    for section, chunk in zip(header.get("sections", []) if sized else [], sections):
        if isinstance(section, dict):
            section.update(length=len(chunk), crc32=zlib.crc32(chunk))
    packed = zlib.compress(json.dumps(header).encode("utf-8"))
    return PREAMBLE.pack(MAGIC, VERSION, len(packed), zlib.crc32(packed)) + packed + b"".join(sections)


def _flip_byte(data: bytes, rng: random.Random, donor: bytes) -> tuple[bytes, str]:
    at = rng.randrange(len(data))
    mask = rng.randrange(1, 256)
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :], f"byte {at} ^= {mask:#04x}"


def _flip_bit(data: bytes, rng: random.Random, donor: bytes) -> tuple[bytes, str]:
    at, bit = rng.randrange(len(data)), rng.randrange(8)
    return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :], f"bit {bit} of byte {at}"


def _truncate(data: bytes, rng: random.Random, donor: bytes) -> tuple[bytes, str]:
    cut = rng.randrange(len(data))
    return data[:cut], f"truncated to {cut} bytes"


def _splice(data: bytes, rng: random.Random, donor: bytes) -> tuple[bytes, str]:
    """Replace, insert, delete or duplicate a span, or graft the donor's tail onto this file's head."""
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.choice([1, 2, 4, 8, 64, 1024]))
    d = rng.randrange(len(donor))
    piece = donor[d : d + (b - a)]
    how = rng.choice(["replace", "insert", "delete", "duplicate", "graft"])
    spliced = {"replace": data[:a] + piece + data[b:], "insert": data[:a] + piece + data[a:],
               "delete": data[:a] + data[b:], "duplicate": data[:b] + data[a:b] + data[b:],
               "graft": data[:a] + donor[d:]}[how]
    return spliced, f"splice {how} [{a}:{b}] with donor [{d}:]"


def _section(data: bytes, rng: random.Random, donor: bytes) -> tuple[bytes, str]:
    """Change one section's bytes and recompute the CRCs (and, half the time, the entry's byte count)."""
    header, sections = split(data)
    if not sections:
        return _header(data, rng, donor)
    index = rng.randrange(len(sections))
    old = sections[index]
    how = rng.choice(["flip", "zero", "ones", "random", "truncate", "extend", "empty", "swap"])
    if how == "flip" and old:
        at = rng.randrange(len(old))
        new = old[:at] + bytes([old[at] ^ rng.randrange(1, 256)]) + old[at + 1 :]
    elif how == "truncate":
        new = old[: rng.randrange(len(old) + 1)]
    elif how == "extend":
        new = old + bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 8, 100])))
    elif how == "swap":
        new = sections[rng.randrange(len(sections))]
    else:
        new = {"zero": bytes(len(old)), "ones": b"\xff" * len(old), "empty": b"",
               "random": bytes(rng.randrange(256) for _ in range(len(old))), "flip": old}[how]
    sections[index] = new
    sized = rng.random() < 0.5
    if sized:
        for entry in header["tensors"].values():
            first, count = entry["sections"]
            if first <= index < first + count:
                role = SECTIONS[entry["encoding"]][index - first]
                entry[f"{role}_bytes"] = len(new)
    return join(header, sections), f"section {index} {how} ({len(old)} -> {len(new)} bytes{', sized' if sized else ''})"


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) to a value inside a JSON document, the root excluded."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((*path, key))
        found += _paths(child, (*path, key))
    return found


def _value(rng: random.Random, old: Any) -> Any:
    """A replacement for `old`: a neighbour of a number, a name of the format, or a generally nasty value."""
    pick = rng.random()
    if pick < 0.3 and isinstance(old, int) and not isinstance(old, bool):
        return rng.choice([old + 1, old - 1, old * 2, old // 2, -old, old + 2**32, old * 1000])
    if pick < 0.5:
        return rng.choice(_NAMES)
    if pick < 0.55:
        depth = rng.choice([63, 64, 65, 600])
        return json.loads("[" * depth + "]" * depth)
    return rng.choice(_VALUES)


def _header(data: bytes, rng: random.Random, donor: bytes) -> tuple[bytes, str]:
    """Replace, delete or add one field anywhere in the header JSON, then recompute the CRCs."""
    header, sections = split(data)
    path = rng.choice(_paths(header))
    *parents, key = path
    parent = header
    for step in parents:
        parent = parent[step]
    how = rng.choice(["replace", "replace", "replace", "delete", "add"])
    where, value = ".".join(map(str, path)), None
    if how == "delete":
        del parent[key]
    elif how == "add" and isinstance(parent, dict):
        name, value = rng.choice([*_NAMES, "x"]), _value(rng, None)
        where, parent[name] = ".".join(map(str, [*parents, name])), value
    elif how == "add":
        value = _value(rng, parent[key])
        parent.insert(key, value)
    else:
        value = parent[key] = _value(rng, parent[key])
    return join(header, sections, sized=False), f"header {how} {where} = {json.dumps(value):.60}"


MUTATIONS: dict[str, Mutation] = {
    "byte": _flip_byte,
    "bit": _flip_bit,
    "truncate": _truncate,
    "splice": _splice,
    "section": _section,
    "header": _header,
}
"""Every mutation, by name. `section` and `header` recompute the checksums; the others do not."""
CHECKED = ("section", "header")
