"""Rich consoles that cannot be driven by the text they print.

Class names, layer names, metadata strings and warnings come from files a user may have downloaded. Rich passes
ESC and most other control characters through, so a class named ``"\\x1b[2J"`` would clear the terminal. Every
console nc-probe prints on is a :class:`SafeConsole`: plain strings are made printable before rich measures them
(so tables keep their widths), and as a last guard the text of every rendered segment is made printable too (rich's
own styling is added after this, so colours still work).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.segment import Segment

from nc_probe.core.text import printable


class SafeConsole(Console):
    """A rich Console that shows control characters in printed text as escapes (``\\x1b``) instead of sending them
    to the terminal. Newlines in plain strings are kept (they are layout); in one-line messages callers escape them
    with :func:`nc_probe.core.text.printable`."""

    def render_str(self, text: str, **kwargs: Any):
        return super().render_str(printable(text, keep_newlines=True), **kwargs)

    def render(self, renderable, options=None) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            if segment.control is None and segment.text and segment.text != "\n":
                text = printable(segment.text, keep_newlines=True)
                if text != segment.text:
                    segment = Segment(text, segment.style, segment.control)
            yield segment


def console(*, stderr: bool = False, **kwargs: Any) -> SafeConsole:
    """The console nc-probe prints on (stdout, or stderr for progress, warnings and errors)."""
    kwargs.setdefault("highlight", False)
    return SafeConsole(stderr=stderr, **kwargs)


_stderr: SafeConsole | None = None


def stderr_console() -> SafeConsole:
    """The one stderr console of the process: warnings, errors and the progress display
    (:mod:`nc_probe.core.progress`) print on the same object, so that rich keeps a message printed while a status
    row is drawn above that row instead of drawing through it."""
    global _stderr
    if _stderr is None:
        _stderr = console(stderr=True)
    return _stderr
