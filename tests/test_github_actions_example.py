"""examples/github-actions.yml runs as written: one install source, no placeholders, every `run:` block valid bash.

The workflow is read with PyYAML (``yaml.safe_load``, in the test extra), as GitHub reads it. Runs in well under a
second.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parent.parent / "examples" / "github-actions.yml"
SOURCE_VAR = "NC_PROBE_SOURCE"
TORCH_CPU = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
# Variables the runner sets for every step (https://docs.github.com/en/actions/reference/variables-reference).
RUNNER_VARS = {"HOME", "PATH", "CI", "pythonLocation"}


def _text() -> str:
    return WORKFLOW.read_text(encoding="utf-8")


def _workflow() -> dict:
    return yaml.safe_load(_text())


def _steps(doc: dict) -> list[dict]:
    return [step for job in doc["jobs"].values() for step in job["steps"]]


def run_blocks(doc: dict) -> list[str]:
    """The script of every step's `run:`, in order."""
    return [step["run"] for step in _steps(doc) if "run" in step]


def env_keys(doc: dict) -> set[str]:
    """Names defined under any `env:` mapping (workflow, job or step)."""
    mappings = [doc.get("env"), *(job.get("env") for job in doc["jobs"].values()),
                *(step.get("env") for step in _steps(doc))]
    return {key for m in mappings if m for key in m}


def _bash_code(line: str) -> str:
    """A line of a run: script without its trailing bash `# comment` (a `#` at its start or after a space, outside
    quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def test_install_source_defined_once_at_the_top():
    doc = _workflow()
    assert SOURCE_VAR in doc["env"], "not in the top-level env:"
    # only there: a job's or a step's own definition would shadow the one a user edits
    for mapping in [*(job.get("env") for job in doc["jobs"].values()), *(step.get("env") for step in _steps(doc))]:
        assert SOURCE_VAR not in (mapping or {}), mapping
    # overridable by a repository variable, with a pinned git URL as the default
    m = re.fullmatch(rf"\$\{{\{{\s*vars\.{SOURCE_VAR}\s*\|\|\s*'([^']+)'\s*\}}\}}", doc["env"][SOURCE_VAR])
    assert m, doc["env"][SOURCE_VAR]
    default = m.group(1)
    assert re.fullmatch(r"git\+https://\S+@\S+", default), f"the default is no pinned git URL: {default}"
    # the default URL is written once: no other copy of it (in a run: block or a comment) to drift out of step
    assert _text().count(default) == 1


def test_install_steps_use_the_variable():
    blocks = [b for b in run_blocks(_workflow()) if re.search(r"\bpip\s+install\b", b)]
    assert blocks, "no install step"
    for block in blocks:
        code = [_bash_code(line) for line in block.splitlines()]
        code = [line for line in code if line.strip()]
        assert any(f'"${SOURCE_VAR}"' in line or f'"${{{SOURCE_VAR}}}"' in line for line in code), block
        for line in code:
            # no other source of nc-probe: neither the PyPI name nor a literal URL
            assert not re.search(r"pip\s+install\b.*(\bnc[-_]probe\b|git\+|https?://\S+\.whl)", line), line
        torch = next(i for i, line in enumerate(code) if TORCH_CPU in line)
        probe = next(i for i, line in enumerate(code) if SOURCE_VAR in line)
        assert torch < probe, "the CPU build of torch must come before nc-probe"


def test_no_placeholders():
    text = _text()
    assert not re.search(r"\bOWNER\b", text)
    assert not re.search(r"<[A-Za-z][^<>\n]*>", text), re.search(r"<[A-Za-z][^<>\n]*>", text).group(0)
    assert not re.search(r"@v\d+\.\d+\.\d+", text.replace("actions/", "")), "pins a release tag of nc-probe"


def test_run_blocks_reference_only_defined_variables():
    """GitHub runs each block with `bash -e`; under `set -u` an undefined variable would stop it."""
    doc = _workflow()
    known = env_keys(doc) | RUNNER_VARS
    for block in run_blocks(doc):
        code = re.sub(r"\$\{\{.*?\}\}", "", block)
        code = "\n".join(_bash_code(line) for line in code.splitlines())
        code = re.sub(r"'[^'\n]*'", "''", code)  # single-quoted text expands nothing
        for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", code):
            assert name in known or name.startswith(("GITHUB_", "RUNNER_")), f"${name} is not defined:\n{block}"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_run_blocks_are_valid_bash():
    blocks = run_blocks(_workflow())
    assert len(blocks) >= 2
    for block in blocks:
        # GitHub replaces ${{ expressions }} before the shell sees the script
        script = "set -euo pipefail\n" + re.sub(r"\$\{\{.*?\}\}", "EXPR", block)
        proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=10)
        assert proc.returncode == 0, f"{proc.stderr}\n{block}"
