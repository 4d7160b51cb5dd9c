"""Start-up of the ``nc-probe`` command: ``--version`` and every command's ``--help`` against ``import torch``.

Each figure is the fastest of ``--repeats`` fresh processes (start-up noise only ever adds time), and the headline is
a ratio of two such figures measured in this same run on this same machine: the command's answer / a bare
``python -c "import torch"`` (goal <= 0.3: answering a question about the command never waits for torch).

Usage::

    python -m bench.startup               # best of 5
    python -m bench.startup --repeats 9 --json startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import cpu_name

GOAL = 0.3
COMMANDS = ("analyze", "layers", "trajectory", "inspect", "gate", "baseline", "compare")


def executable() -> list[str]:
    """The installed ``nc-probe`` script beside this interpreter (what a user runs), else ``python -m nc_probe``."""
    script = Path(sys.executable).with_name("nc-probe")
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "nc_probe"]


def best_of(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return min(times)


def machine() -> str:
    """The CPU's model name and the core count."""
    return f"{cpu_name()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="fresh processes per figure; the fastest counts")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    cli = executable()
    figures: dict = {"machine": machine(), "repeats": args.repeats, "goal": GOAL}
    # interleaving would not help: each figure is a minimum over fresh processes, and torch's files stay cached
    figures["import_torch_s"] = best_of([sys.executable, "-c", "import torch"], args.repeats)
    figures["version_s"] = best_of([*cli, "--version"], args.repeats)
    figures["help_s"] = {c: best_of([*cli, c, "--help"], args.repeats) for c in COMMANDS}
    base = figures["import_torch_s"]
    worst = max(figures["help_s"].values())
    figures["ratio_version"], figures["ratio_help_worst"] = figures["version_s"] / base, worst / base
    print(f"machine: {figures['machine']}")
    print(f"python -c 'import torch': {base:.3f} s (best of {args.repeats})")
    print(f"nc-probe --version:       {figures['version_s']:.3f} s = {figures['ratio_version']:.2f}x import torch")
    for c, t in figures["help_s"].items():
        print(f"nc-probe {c} --help:{' ' * (11 - len(c))}{t:.3f} s = {t / base:.2f}x import torch")
    ok = max(figures["ratio_version"], figures["ratio_help_worst"]) <= GOAL
    print(f"goal <= {GOAL}x: {'met' if ok else 'NOT met'}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
