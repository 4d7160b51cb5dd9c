"""Parsing of option values shared by several commands (class lists, byte sizes)."""

from __future__ import annotations

import re

from ..errors import InputError

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20, "g": 1e9,
          "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_bytes(text: str, option: str = "--memory-budget") -> int:
    """'2GiB', '512MiB', '1.5G', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"{option} {text!r} is not a size", fix="write e.g. 2GiB, 512MiB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_classes(text: str | None, option: str = "--classes") -> list[int] | None:
    """'0,3,5-9' -> [0, 3, 5, 6, 7, 8, 9]; None stays None."""
    if text is None:
        return None
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise InputError(f"{option} {text!r}: {part!r} is not a class index or range",
                             fix="write e.g. 0,3,5-9")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise InputError(f"{option} {text!r}: range {part} runs backwards", fix=f"write {hi}-{lo}")
        out.extend(range(lo, hi + 1))
    return sorted(set(out))
