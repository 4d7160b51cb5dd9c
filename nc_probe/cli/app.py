"""The ``nc-probe`` command line: a thin shell over the Python API (each command calls public functions).

This module only builds the Typer app and registers the commands of :mod:`nc_probe.cli`; what they share
(consoles, errors, exit codes) is in :mod:`nc_probe.cli.shell`, their options in
:mod:`nc_probe.cli.options`. The executable is :func:`nc_probe.entry.main`.
"""

from __future__ import annotations

import typer

from nc_probe._version import __version__
from nc_probe.cli import analyze, compare, gate, inspect, layers, trajectory
from nc_probe.cli.options import Group

app = typer.Typer(
    name="nc-probe",
    cls=Group,
    help="Measure the geometry of what a classifier learned: neural collapse NC1-NC4, class subspace ranks, "
    "MCR^2 coding rates and principal angles of its features: the penultimate layer, every layer, through training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nc-probe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.",
                                 metavar=""),
) -> None:
    """nc-probe: neural collapse and subspace geometry of classifier features."""


for _command in (analyze, layers, trajectory, inspect, gate, compare):
    _command.register(app)
