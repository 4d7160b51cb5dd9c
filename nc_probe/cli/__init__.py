"""CLI: the nc-probe command line, a thin Typer shell over the Python API - one module per command, the shared
Annotated option types (options), the output set checked before any work and written all or nothing (outputs), and
the mapping of library errors to flags and exit codes (shell). The executable is nc_probe.entry.main.
"""
