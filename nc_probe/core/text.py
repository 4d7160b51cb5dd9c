"""Small text helpers shared by errors, renderers and the gate: lists cut short, messages cut at a word, numbers
and byte sizes as a person reads them."""

from __future__ import annotations

import math
import re

#: Characters a terminal interprets rather than shows: C0 and C1 controls (ESC starts an ANSI sequence that can clear
#: the screen or rewrite a line), DEL, and the Unicode controls that reorder or hide text (bidi overrides, zero-width
#: and line/paragraph separators).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def few(items, n: int = 5) -> str:
    """``"a, b, c, ..."``: the first ``n`` items, and an ellipsis when there are more."""
    items = list(items)
    return ", ".join(str(i) for i in items[:n]) + (", ..." if len(items) > n else "")


def first_line(error, limit: int = 160) -> str:
    """The first non-empty line of an error message (or of any text), cut at a word boundary, never mid-word."""
    text = str(error).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return (cut if len(cut) > limit // 2 else line[:limit]) + " ..."


def format_number(value, digits: int = 4) -> str:
    """Numbers as a person reads them: integers plain, very small or large floats in scientific notation, absent
    (None, NaN) as '-'. The one formatter of the terminal, HTML, Markdown and gate outputs."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, int)):
        return str(value)
    v = float(value)
    if v == 0:
        return "0"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if abs(v) < 1e-3 or abs(v) >= 1e5:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".")


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; binary units, 3 significant digits."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"  # pragma: no cover - the loop always returns


def distinct_pair(a: float, b: float, digits: int = 6) -> tuple[str, str]:
    """Two numbers formatted with enough digits (at least ``digits``) that different numbers look different."""
    for n in (digits, 9, 12, 17):
        sa, sb = format_number(a, n), format_number(b, n)
        if sa != sb or a == b:
            return sa, sb
    return repr(float(a)), repr(float(b))


def plain_number(value):
    """A table cell (numpy or pandas scalar) as a Python int or float for :func:`format_number`; NaN -> None;
    anything that is not a number comes back as it is."""
    if value is None:
        return None
    try:
        if isinstance(value, float) or getattr(getattr(value, "dtype", None), "kind", "") == "f":
            f = float(value)
            return None if math.isnan(f) else f
        return int(value)
    except (TypeError, ValueError):
        return value


def printable(text, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``), so that text read from a file can
    neither drive the terminal (ANSI sequences, carriage returns) nor break a one-line message (newlines), unless
    ``keep_newlines``."""
    text = str(text)

    def escape(m: re.Match) -> str:
        ch = m.group()
        if keep_newlines and ch == "\n":
            return ch
        return {"\n": "\\n", "\r": "\\r", "\t": " "}.get(ch, f"\\x{ord(ch):02x}" if ord(ch) < 256
                                                           else f"\\u{ord(ch):04x}")

    return _CONTROL.sub(escape, text)


def quoted(value, limit: int = 60) -> str:
    """Text that came from a file, as it goes into one of nc-probe's own sentences: printable, cut to ``limit``
    characters and in quotes, so a reader can tell the file's words from nc-probe's advice. For messages that go
    through :func:`nc_probe.core.errors.spell` (every InputError does), which turns the doubled braces back."""
    text = printable(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    # braces doubled: a file's "{trust_checkpoint}" must not become nc-probe's advice "--trust-checkpoint"
    return "'" + text.replace("'", "\\'").replace("{", "{{").replace("}", "}}") + "'"
