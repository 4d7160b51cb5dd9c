"""The ``nc-probe`` command line: a thin shell over the Python API (each command calls one public function).

Errors in the user's input print one line and exit with code 2; a rule broken in ``gate`` exits 1.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from . import distributed
from ._version import __version__
from .errors import InputError

app = typer.Typer(
    name="nc-probe",
    help="Measure the geometry of what a classifier learned: neural collapse NC1-NC4, class subspace ranks, "
    "MCR^2 coding rates and principal angles of its penultimate features.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True, highlight=False)


# Options naming files a command writes; under torchrun only rank 0 writes them (see _quiet_worker).
OUTPUT_OPTIONS = ("json_path", "out", "plots", "html", "junit", "markdown", "output")


def user_errors(fn):
    """Turn InputError (and OS errors on paths) into one line on stderr and exit code 2; join torchrun's group."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            if distributed.init_from_env(kwargs.get("device") or "auto") and not distributed.is_main():
                with _quiet_worker(kwargs) as worker_kwargs:
                    return fn(*args, **worker_kwargs)
            return fn(*args, **kwargs)
        except InputError as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as e:
            if e.filename is None:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(e.filename))}: {e.strerror}. Choose a writable path.",
                              soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("nc-probe: interrupted")
            raise typer.Exit(130) from None

    return wrapper


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


def _version(value: bool):
    if value:
        typer.echo(f"nc-probe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    """nc-probe: neural collapse and subspace geometry of classifier features."""


def _register():
    from .commands import analyze, compare, gate, inspect

    for module in (analyze, inspect, gate, compare):
        module.register(app, user_errors)


_register()


def main() -> int:
    from .entry import main as entry_main

    return entry_main()
