"""Asking the command something (``--version``, ``--help``, a usage error) answers without importing torch.

Behaviour, not timing: what is imported when the answer is printed (bench/startup.py times it)."""

from __future__ import annotations

import json
import subprocess
import sys

# Runs in a fresh interpreter (this test process has imported torch long ago): every question through the real
# entry point, then the heavy modules that were imported by then.
PROBE = r"""
import json, sys
from nc_probe.entry import main
from nc_probe.cli.app import app
commands = sorted(c.name for c in app.registered_commands)
answers = {}
for args in (["--version"], ["--help"], *([c, "--help"] for c in commands), ["analyze", "--eps2", "many"]):
    sys.argv = ["nc-probe", *args]
    try:
        main()
    except SystemExit as e:
        answers[" ".join(args)] = e.code
print(json.dumps({"commands": commands, "answers": answers,
                  "heavy": sorted(m for m in ("torch", "torchvision", "transformers") if m in sys.modules)}))
"""


def _probe() -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_version_help_and_usage_errors_answer_without_torch():
    out = _probe()
    assert set(out["commands"]) >= {"analyze", "layers", "trajectory", "inspect", "gate", "baseline", "compare"}
    codes = out["answers"]
    assert codes.pop("analyze --eps2 many") == 2  # a usage error is an answer too
    assert set(codes.values()) == {0}, codes
    assert len(codes) == len(out["commands"]) + 2
    assert out["heavy"] == []


def test_the_executable_prints_its_version_without_importing_torch():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "nc_probe", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("nc-probe ")
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "nc_probe.cli.app" in imported  # the probe saw the CLI load: the absence below means something
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}


def test_a_command_still_imports_what_it_needs(tmp_path):
    """The lazy imports are done by the commands themselves: a real run still works from a fresh process."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "f.npz", H=rng.normal(size=(3, 5))[y] * 4 + rng.normal(size=(60, 5)), y=y)
    proc = subprocess.run([sys.executable, "-m", "nc_probe", "analyze", str(tmp_path / "f.npz"), "-q", "--json",
                           str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["inputs"]["num_samples"] == 60
