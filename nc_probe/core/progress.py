"""What a run is doing, on stderr: a status row (spinner, what, time in it) for each phase and a bar for the
extraction, all on one rich display that vanishes when the run ends.

Three calls, usable anywhere below the CLI without passing anything down:

- ``with shown(on):`` opens the display for the block (the CLI and the public entry points, whose ``progress``
  flag it is; :func:`shows_progress` does it for a function). Nothing is shown when ``on`` is false (``-q``), when
  stderr is not a terminal (logs, pipes, CI; a notebook gets rich's widget), or on a torchrun rank other than 0.
  Inside an open display it does nothing: the outer one serves; except inside the CLI's start-up display, which
  the first ``shown`` block of the command takes over and closes (``handover``), so that no second of a run passes
  without a row.
- ``with phase("loading the model"):`` a row while the block runs; phases nest (a row per level).
- ``step("pass 2: predictions")``: the innermost row now does this (its clock restarts); one line, no block, for
  code whose structure should not change for the sake of progress.

Without an open display every call costs a context-variable look-up: library code calls them unconditionally. The
display lives in a context variable, so worker threads (which do not inherit it) print nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from rich.console import Console

from nc_probe.core.consoles import stderr_console

__all__ = ["Bar", "abandon", "active", "bar", "phase", "shown", "shows_progress", "step"]

F = TypeVar("F", bound=Callable[..., Any])


class _Display:
    """One rich Progress: a row (task) per open phase, plus the extraction's bar."""

    def __init__(self, console: Console):
        from rich.progress import Progress

        self.progress = Progress(*_columns(), console=console, transient=True,
                                 redirect_stdout=False)  # stdout may be a file: never print its text on stderr
        self.rows: list[tuple[Any, str | None]] = []  # (task id, the phase's name; None for a row step() opened)
        self.handover = False  # open for the next shown() block to take over (see shown)
        self.closed = False
        self.progress.start()

    def push(self, name: str | None, description: str) -> Any:
        task = self.progress.add_task(description, total=None, bar=False, of="", rate="")
        self.rows.append((task, name))
        self.progress.refresh()  # drawn now, however short the phase: the row is seen and the log tells
        return task

    def pop(self, task) -> None:
        while self.rows:
            top, _ = self.rows.pop()
            self.progress.remove_task(top)
            if top == task:
                break
        self.progress.refresh()

    def step(self, what: str) -> None:
        if not self.rows:
            self.push(None, what)
            return
        task, name = self.rows[-1]
        self.progress.reset(task, description=what if name is None else f"{name}: {what}")
        self.progress.refresh()

    def clear(self) -> None:
        for task, _ in self.rows:
            self.progress.remove_task(task)
        self.rows = []

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.progress.stop()


def _columns() -> list:
    """Spinner, description, elapsed time; and on bar rows only the bar, the counts, samples/s and the time left
    (phases have no total: those would be noise on their rows). The bar is short so that a bar row fits 80
    columns. rich.progress is imported here, when a display opens, not when the CLI starts."""
    from rich.progress import (
        BarColumn,
        ProgressColumn,
        SpinnerColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class OnlyForBars(ProgressColumn):
        def __init__(self, column: ProgressColumn):
            super().__init__()
            self.column = column

        def render(self, task: Task):
            return self.column.render(task) if task.fields.get("bar") else Text("")

        def get_table_column(self):
            return self.column.get_table_column()

    return [SpinnerColumn(), TextColumn("{task.description}"), OnlyForBars(BarColumn(bar_width=24)),
            OnlyForBars(TextColumn("{task.completed:,.0f}/{task.fields[of]}")),
            OnlyForBars(TextColumn("{task.fields[rate]} samples/s")), TimeElapsedColumn(),
            OnlyForBars(TimeRemainingColumn())]


_display: ContextVar[_Display | None] = ContextVar("nc_probe_progress", default=None)


def _open() -> _Display | None:
    display = _display.get()
    return None if display is None or display.closed else display


def active() -> bool:
    """Whether a display is open here (then phases, steps and bars are drawn)."""
    return _open() is not None


@contextlib.contextmanager
def shown(on: bool = True, *, console: Console | None = None, handover: bool = False) -> Iterator[None]:
    """Open the display for the block, when ``on``, on torchrun's rank 0, and when ``console`` (default: nc-probe's
    stderr console) is a terminal; inside an open display, nothing (the outer one serves).

    ``handover``: the display is the start-up's (the CLI opens it before a command imports what it needs, so that
    no second passes without a row); the first ``shown`` block inside takes it over: its rows are cleared, and it
    closes when that block ends, so that the command prints its results with no display left."""
    outer = _open()
    if outer is not None and outer.handover:
        outer.handover = False
        outer.clear()
        try:
            yield
        finally:
            outer.close()
        return
    if not on or outer is not None or not _main_rank():
        yield
        return
    console = console if console is not None else stderr_console()
    # is_interactive is decided when the console is made (rich draws live displays only then): both must hold; a
    # notebook (progress=True from the Python API) gets rich's widget
    if not (console.is_jupyter or console.is_terminal and console.is_interactive and not console.is_dumb_terminal):
        yield
        return
    display = _Display(console)
    display.handover = handover
    token = _display.set(display)
    try:
        yield
    finally:
        _display.reset(token)
        display.close()


def shows_progress(fn: F) -> F:
    """``fn``'s ``progress`` keyword (a bool, default False) opens the display around its call (see :func:`shown`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with shown(bool(kwargs.get("progress", False))):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """A row saying ``name`` (and the time spent in it) while the block runs, when a display is open."""
    display = _open()
    if display is None:
        yield
        return
    task = display.push(name, name)
    try:
        yield
    finally:
        display.pop(task)


def step(what: str) -> None:
    """The innermost row now says ``phase: what`` and times it from now (a row of its own when none is open)."""
    display = _open()
    if display is not None:
        display.step(what)


class Bar:
    """A bar row of the open display: a callable ``(done, total)`` with samples/s; :meth:`close` removes it."""

    def __init__(self, display: _Display, total: int | None, description: str):
        self.display, self.t0 = display, time.perf_counter()
        self.task = display.progress.add_task(description, total=total or None, bar=True,
                                              of=f"{total:,}" if total else "?", rate="-")
        display.rows.append((self.task, description))
        display.progress.refresh()

    def __call__(self, done: int, total: int | None) -> None:
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        self.display.progress.update(self.task, completed=done, rate=f"{rate:,.0f}")

    def close(self) -> None:
        self.display.pop(self.task)


def bar(total: int | None, description: str) -> Bar | None:
    """A bar for ``total`` samples (None: unknown) when a display is open, else None."""
    display = _open()
    return None if display is None else Bar(display, total, description)


def abandon() -> None:
    """Take the open display down now: the process is about to end without unwinding (Ctrl-C inside an import, see
    :mod:`nc_probe.entry`), and the terminal should get its cursor back and keep no half-drawn rows."""
    display = _open()
    if display is not None:
        display.close()


def _main_rank() -> bool:
    """Not a torchrun rank other than 0. torchrun's RANK says so before the process group exists (the CLI shows its
    start-up before joining it), and without importing torch."""
    if os.environ.get("RANK", "0") != "0":
        return False
    if "torch.distributed" not in sys.modules:
        return True
    from nc_probe.core import distributed

    return distributed.is_main()
