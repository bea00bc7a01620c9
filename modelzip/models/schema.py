"""Checks for the JSON records a .mzip file carries (the `arch` record and its edits), run before anything is built.

A file is untrusted input. Each field is checked for its type and range here, so a bad record raises a ModelError
that names the field (`arch.edits[2].attrs.forward`) instead of a TypeError deep inside a constructor, and no size
in it can ask for more than a bounded amount of memory. A check is a function of (value, path) that returns
nothing or raises.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, NoReturn

from ..errors import ModelError

Check = Callable[[Any, str], None]

MAX_DIM = 1 << 24  # one dimension: 16M (the largest vocabularies are ~256k)
MAX_DIMS = 8  # dimensions of a tensor a record shapes (Conv3d's weight has 5)
MAX_ELEMENTS = 1 << 32  # elements of one tensor a record shapes: 16 GiB of float32, above any layer modelzip compresses
MAX_ITEMS = 1 << 16  # entries of a list or object in a record (edits, widths, attributes)
MAX_TEXT = 1 << 10  # characters of a name or reference


def fail(path: str, what: str, value: Any) -> NoReturn:
    """Raise the ModelError every check raises: the field, what it must be, and (briefly) what it is."""
    raise ModelError(f"{path} must be {what}, found {value!r:.60}")


def is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def integer(low: int, high: int) -> Check:
    def check(value: Any, path: str) -> None:
        if not is_int(value, low, high):
            fail(path, f"an integer in [{low}, {high}]", value)
    return check


def boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        fail(path, "true or false", value)


def fraction(value: Any, path: str) -> None:
    """A probability such as a dropout rate: a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        fail(path, "a number in [0, 1)", value)


def text(pattern: str = r".+", what: str = "a non-empty string") -> Check:
    """A string of at most MAX_TEXT characters matching `pattern` in full."""
    compiled = re.compile(pattern, re.DOTALL)

    def check(value: Any, path: str) -> None:
        if not (isinstance(value, str) and len(value) <= MAX_TEXT and compiled.fullmatch(value)):
            fail(path, what, value)
    return check


def choice(options: Collection[str]) -> Check:
    def check(value: Any, path: str) -> None:
        if not (isinstance(value, str) and value in options):
            fail(path, f"one of {', '.join(map(repr, sorted(options)))}", value)
    return check


def sequence(item: Check, low: int = 0, high: int = MAX_ITEMS) -> Check:
    """A list of `low` to `high` items, each passing `item`."""
    def check(value: Any, path: str) -> None:
        if not (isinstance(value, list) and low <= len(value) <= high):
            fail(path, f"a list (of {low} to {high} items)", value)
        for index, element in enumerate(value):
            item(element, f"{path}[{index}]")
    return check


def table(item: Check, keys: Collection[str] | None = None) -> Check:
    """An object of string keys (only `keys`, if given), each value passing `item`."""
    def check(value: Any, path: str) -> None:
        if not (isinstance(value, dict) and len(value) <= MAX_ITEMS):
            fail(path, f"an object (of at most {MAX_ITEMS} keys)", value)
        for key, element in value.items():
            if keys is not None and key not in keys:
                raise ModelError(f"{path} has an unknown key {key!r:.60} (allowed: {', '.join(sorted(keys))})")
            item(element, f"{path}.{key}")
    return check


def record(required: Mapping[str, Check], optional: Mapping[str, Check] | None = None) -> Check:
    """An object with every `required` key, perhaps some `optional` ones, and no other."""
    fields = {**required, **(optional or {})}

    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            fail(path, "an object", value)
        for key in required:
            if key not in value:
                raise ModelError(f"{path} has no {key!r} (required: {', '.join(required)})")
        for key, element in value.items():
            if key not in fields:
                raise ModelError(f"{path} has an unknown key {key!r:.60} (allowed: {', '.join(fields)})")
            fields[key](element, f"{path}.{key}")
    return check


def known(fields: Mapping[str, Check]) -> Check:
    """An object of string keys whose values pass their key's check in `fields`; other keys go unchecked."""
    def check(value: Any, path: str) -> None:
        if not (isinstance(value, dict) and len(value) <= MAX_ITEMS):
            fail(path, f"an object (of at most {MAX_ITEMS} keys)", value)
        for key, element in value.items():
            if key in fields:
                fields[key](element, f"{path}.{key}")
    return check


def shape(value: Any, path: str) -> None:
    """A tensor shape: at most MAX_DIMS sizes in [0, MAX_DIM], at most MAX_ELEMENTS elements in all."""
    sequence(integer(0, MAX_DIM), 0, MAX_DIMS)(value, path)
    if math.prod(value) > MAX_ELEMENTS:
        fail(path, f"a shape of at most {MAX_ELEMENTS} elements", value)
