"""Memory sizes as requests spell them (`800MB`, `0.8GB`, `2GiB`) and as plans print them."""

from __future__ import annotations

import re
from typing import Any

from twossp_core.errors import InvalidSpec

MAX_SIZE = 2**60
_SIZE_RE = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[kKmMgGtT]i?[bB]?|[bB])?\s*$")
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as `800MB`, `0.8GB`, `2GiB`, `1024` (decimal units: 1 GB = 10^9)."""
    if isinstance(value, bool):
        raise InvalidSpec(f"memory size {value!r} is not a size")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidSpec(f"memory size {value!r} is not a size")
        size = int(value)
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match is None:
            raise InvalidSpec(f"memory size {value!r}: expected bytes or a number with a unit (800MB, 0.8GB, 2GiB)")
        unit = (match["unit"] or "").lower().removesuffix("b")
        size = int(float(match["num"]) * _UNITS[unit])
    else:
        raise InvalidSpec(f"memory size {value!r} is not a size")
    if not 0 < size <= MAX_SIZE:
        raise InvalidSpec(f"memory size {value!r} must be positive and at most 1 EiB")
    return size


def format_size(size: int | float | None) -> str:
    if size is None:
        return "-"
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(size) >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{int(size)} B"
