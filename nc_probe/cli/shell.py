"""What every command shares at the edge to the user: the consoles, and the mapping of library errors to one line
on stderr with the command's flags and an exit code. Commands import this module; it imports no command.

Exit codes: 0 done, 1 a gate rule broken (the gate command's own), 2 a user error (bad input, settings or output
paths), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import typer
from rich.markup import escape

from nc_probe.cli.options import flag_name
from nc_probe.core.consoles import console, stderr_console
from nc_probe.core.errors import InputError, spell
from nc_probe.core.progress import shown, step
from nc_probe.core.text import first_line, printable

USER_ERROR, INTERRUPTED = 2, 130
out_console = console()
err_console = stderr_console()  # the progress display's too: a warning printed meanwhile lands above its rows

# Options naming files a command writes; under torchrun only rank 0 writes them (see _quiet_worker).
OUTPUT_OPTIONS = ("json_path", "out", "plots", "html", "junit", "markdown", "output")


def cli_text(text: str) -> str:
    """A library message or warning with its settings spelled as flags (``{eps2}`` -> ``--eps2``)."""
    return spell(text, flag_name)


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def warn(message: str) -> None:
    """One warning on stderr, its settings spelled as flags, its text made printable; under torchrun only rank 0
    warns (every rank computes the same report)."""
    if _other_rank():
        return
    err_console.print(f"[yellow]warning:[/] {escape(printable(cli_text(message)))}", soft_wrap=True)


def user_errors(fn: Callable) -> Callable:
    """Run a command: InputError (and OS errors on paths) become one line on stderr and exit 2, Ctrl-C exit 130;
    under torchrun, ranks other than 0 run quietly (see :func:`_quiet_worker`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return _run(fn, args, kwargs)

    return wrapper


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning raised by a library during a command (torch, matplotlib, ...) as one printable line, not
    Python's two-line form with a source line."""
    err_console.print(f"[yellow]warning:[/] {escape(printable(first_line(message, 300)))}", soft_wrap=True)


def _other_rank() -> bool:
    """Whether this process is a torchrun rank other than 0. Without torch imported no process group can exist, and
    importing torch (seconds) to find that out would make ``--help`` and early warnings slow."""
    if "torch" not in sys.modules:
        return False
    from nc_probe.core import distributed

    return distributed.active() and not distributed.is_main()


def _run(fn: Callable, args, kwargs):
    try:
        # The start-up's row, from the first second until the command's own progress takes the display over (its
        # first shown() block) or, at the latest, until the command ends: before any error or result is printed.
        with shown(not kwargs.get("quiet", False), handover=True):
            step("starting (importing torch)")
            from nc_probe.core import distributed  # torch: only once a command runs, never for --help or --version

            step("starting")
            joined = distributed.initialized()
            worker = distributed.init_from_env(kwargs.get("device") or "auto") and not distributed.is_main()
            started = not joined and distributed.initialized()
            try:
                if worker:
                    with _quiet_worker(kwargs) as worker_kwargs:
                        result = fn(*args, **worker_kwargs)
                else:
                    result = fn(*args, **kwargs)
            except typer.Exit:  # a verdict (the gate's exit code): every rank reaches the same one
                distributed.leave(started)
                raise
            distributed.leave(started)
            return result
    except InputError as e:
        error(e.render(flag_name))
        raise typer.Exit(USER_ERROR) from None
    except OSError as e:
        if e.filename is None:
            raise
        error(f"{printable(e.filename)}: {e.strerror}. Choose a writable path.")
        raise typer.Exit(USER_ERROR) from None
    except KeyboardInterrupt:
        err_console.print("nc-probe: interrupted")
        raise typer.Exit(INTERRUPTED) from None


@contextlib.contextmanager
def _quiet_worker(kwargs: dict):
    """Ranks other than 0 compute the same collectives but print nothing and write their outputs to a scratch
    folder that is then removed, so every rank runs exactly the same code path."""
    scratch = Path(tempfile.mkdtemp(prefix="nc-probe-rank"))
    moved = {k: (scratch / f"{k}-{Path(v).name}" if k in OUTPUT_OPTIONS and v is not None else v)
             for k, v in kwargs.items()}
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield moved
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
