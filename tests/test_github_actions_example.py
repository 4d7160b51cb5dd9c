"""examples/github-actions.yml runs as written: one install source, no placeholders, every `run:` block valid bash.

The `run:` blocks are read with a small parser of YAML block scalars (PyYAML is not a dependency); where PyYAML is
installed, the test also checks that it reads the same blocks. Runs in well under a second.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

WORKFLOW = Path(__file__).resolve().parent.parent / "examples" / "github-actions.yml"
SOURCE_VAR = "NC_PROBE_SOURCE"
TORCH_CPU = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
# Variables the runner sets for every step (https://docs.github.com/en/actions/reference/variables-reference).
RUNNER_VARS = {"HOME", "PATH", "CI", "pythonLocation"}


def _text() -> str:
    return WORKFLOW.read_text(encoding="utf-8")


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a `#` at its start or after a space, outside quotes)."""
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


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def run_blocks(text: str) -> list[str]:
    """The script of every `run:` key: a `|` / `>` block scalar (as `|`: the lines, less their common indentation)
    or a one-line plain or quoted value."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*(?:-\s+)?)run:\s*(.*)$", _strip_comment(lines[i]))
        i += 1
        if not m:
            continue
        key_indent, value = len(m.group(1)), m.group(2).strip()
        if value and value[0] not in "|>":
            if value[0] in "'\"" and value[-1] == value[0]:
                value = value[1:-1]
            blocks.append(value)
            continue
        body = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > key_indent):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        common = min((_indent(b) for b in body if b.strip()), default=0)
        blocks.append("\n".join(b[common:] for b in body) + "\n")
    return blocks


def env_keys(text: str) -> set[str]:
    """Names defined under any `env:` mapping (workflow, job or step)."""
    keys: set[str] = set()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)env:\s*$", _strip_comment(line))
        if not m:
            continue
        for inner in lines[i + 1:]:
            if not inner.strip() or inner.lstrip().startswith("#"):
                continue
            if _indent(inner) <= len(m.group(1)):
                break
            km = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:", inner)
            if km:
                keys.add(km.group(1))
    return keys


def test_parser_reads_block_scalars():
    text = "steps:\n  - run: |\n      a\n        b\n\n      c\n    x: 1\n  - run: echo 'one'   # note\n"
    assert run_blocks(text) == ["a\n  b\n\nc\n", "echo 'one'"]


def test_same_blocks_as_pyyaml():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(_text())
    expected = [step["run"] for job in doc["jobs"].values() for step in job["steps"] if "run" in step]
    assert [b.rstrip("\n") for b in run_blocks(_text())] == [b.rstrip("\n") for b in expected]
    assert SOURCE_VAR in doc["env"]


def test_install_source_defined_once_at_the_top():
    text = _text()
    definitions = [line for line in text.splitlines() if re.match(rf"^\s*{SOURCE_VAR}\s*:", line)]
    assert len(definitions) == 1, definitions
    # ... in the workflow-level `env:` (indented by two under a top-level `env:` key), overridable by a variable
    top = re.search(r"^env:\s*\n((?:[ \t]*(?:#.*)?\n|  .*\n)*)", text, re.M)
    assert top and re.search(rf"^  {SOURCE_VAR}:", top.group(1), re.M), "not in the top-level env:"
    m = re.search(rf"{SOURCE_VAR}:\s*\$\{{\{{\s*vars\.{SOURCE_VAR}\s*\|\|\s*'([^']+)'\s*\}}\}}", definitions[0])
    assert m, definitions[0]
    default = m.group(1)
    assert re.fullmatch(r"git\+https://\S+@\S+", default), f"the default is no pinned git URL: {default}"
    # the default URL is written once: no other copy of it (in a run: block or a comment) to drift out of step
    assert text.count(default) == 1


def test_install_steps_use_the_variable():
    blocks = [b for b in run_blocks(_text()) if re.search(r"\bpip\s+install\b", b)]
    assert blocks, "no install step"
    for block in blocks:
        code = [_strip_comment(line) for line in block.splitlines()]
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
    text = _text()
    known = env_keys(text) | RUNNER_VARS
    for block in run_blocks(text):
        code = re.sub(r"\$\{\{.*?\}\}", "", block)
        code = "\n".join(_strip_comment(line) for line in code.splitlines())
        code = re.sub(r"'[^'\n]*'", "''", code)  # single-quoted text expands nothing
        for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", code):
            assert name in known or name.startswith(("GITHUB_", "RUNNER_")), f"${name} is not defined:\n{block}"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_run_blocks_are_valid_bash():
    blocks = run_blocks(_text())
    assert len(blocks) >= 2
    for block in blocks:
        # GitHub replaces ${{ expressions }} before the shell sees the script
        script = "set -euo pipefail\n" + re.sub(r"\$\{\{.*?\}\}", "EXPR", block)
        proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=10)
        assert proc.returncode == 0, f"{proc.stderr}\n{block}"
