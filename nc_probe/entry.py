"""The ``nc-probe`` executable: import the CLI and run it, turning Ctrl-C anywhere (imports included) into one line.

Kept apart from :mod:`nc_probe.cli.app` so that the handler is in place before anything is imported. The CLI itself
loads without torch (``--version`` and ``--help`` answer in a fraction of ``import torch``; tests/test_startup.py), but
a command imports torch and the model's libraries as it starts, which takes seconds: an interrupt then would
otherwise end in a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def _on_sigint(signum, frame) -> None:
    """Ctrl-C inside an import ends the process at once; anywhere else it raises KeyboardInterrupt as usual (so
    staged outputs are rolled back). Why: a KeyboardInterrupt raised while numpy or torch initialise can be swallowed
    by the library, leaving a half-imported module (``numpy has no attribute matrix``) and a run that goes on and
    fails later with a traceback. An import writes no output, so there is nothing to roll back."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            progress = sys.modules.get("nc_probe.core.progress")  # a status row may be drawn (the start-up's)
            if progress is not None:
                progress.abandon()
            sys.stderr.write("nc-probe: interrupted\n")
            sys.stderr.flush()
            os._exit(INTERRUPTED)
        frame = frame.f_back
    raise KeyboardInterrupt


def main() -> int:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when an embedding program chose one
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        from nc_probe.cli.app import app

        app(prog_name="nc-probe")  # exits through SystemExit with the command's code
    except KeyboardInterrupt:
        sys.stderr.write("nc-probe: interrupted\n")
        return INTERRUPTED
    return 0
