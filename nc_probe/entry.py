"""The ``nc-probe`` executable: import the CLI and run it, turning Ctrl-C anywhere (imports included) into one line.

Kept apart from :mod:`nc_probe.cli` because loading the CLI imports torch, which takes seconds: an interrupt then
would otherwise end in a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import sys

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def main() -> int:
    try:
        from .cli import app

        app(prog_name="nc-probe")  # exits through SystemExit with the command's code
    except KeyboardInterrupt:
        sys.stderr.write("nc-probe: interrupted\n")
        return INTERRUPTED
    return 0
