"""The floor plan, enforced: each stage imports only from the stages below it, and no module reaches into another
module's private names. The order is the one the README's "Layout" section describes; a new module goes into the
stage whose job it does, and this test says when it reaches upward."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nc_probe"

# Lowest first. core, metrics and stats are the kernels every stage may use (errors and settings; pure formulas;
# mergeable statistics); then the data path in the order data flows (load -> data -> taps -> extract); reports (the
# typed results) sit below analysis, which builds them; render and cli read everything below and nothing reads them.
STAGES = ("core", "metrics", "stats", "load", "data", "taps", "extract", "reports", "analysis", "training", "render",
          "cli")
# Top-level modules: the lazy public API (__init__), the version, and the executable's entry; not a stage.
ROOT_MODULES = {"__init__", "__main__", "_version", "entry"}


def stage_of(module: str) -> str | None:
    """The stage of a dotted module name under nc_probe (None for the root modules and the bundled samples)."""
    parts = module.split(".")
    if parts[0] != "nc_probe" or len(parts) == 1:
        return None
    return parts[1] if parts[1] in STAGES else None


def imports_of(path: Path, module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import of nc_probe in a file, lazy ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("nc_probe")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("nc_probe"):
                names = [a.name for a in node.names]
                # ``from nc_probe.stage import module``: the module is the import, not a name in the package
                subs = [n for n in names if (PACKAGE.parent / Path(*target.split("."), n)).with_suffix(".py").exists()]
                found += [(node.lineno, f"{target}.{n}", []) for n in subs]
                rest = [n for n in names if n not in subs]
                if rest:
                    found.append((node.lineno, target, rest))
    return found


def violations(path: Path, module: str) -> list[str]:
    """Upward imports and private names taken from another module, one line each."""
    here = stage_of(module)
    out = []
    for line, target, names in imports_of(path, module):
        there = stage_of(target)
        if here is not None and there is not None and STAGES.index(there) > STAGES.index(here):
            out.append(f"{module}:{line} imports {target} ({there} is above {here})")
        if target != module:
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private or any(p.startswith("_") and p != "_version" for p in target.split(".")[1:]):
                out.append(f"{module}:{line} takes private {', '.join(private) or target} from {target}")
    return out


def package_modules() -> list[tuple[Path, str]]:
    mods = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods.append((path, ".".join(parts)))
    return mods


def test_every_module_is_in_a_stage():
    loose = [m for p, m in package_modules()
             if stage_of(m) is None and m.split(".")[-1] not in ROOT_MODULES and m != "nc_probe"
             and not m.startswith("nc_probe.sample_checkpoints")]
    assert loose == [], f"modules outside every stage (put each in the stage whose job it does): {loose}"


def test_stages_import_only_downward_and_no_private_names():
    found = [v for path, module in package_modules() for v in violations(path, module)]
    assert found == [], "\n".join(found)


def test_every_stage_says_what_it_owns():
    for stage in STAGES:
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 20, f"nc_probe/{stage}/__init__.py needs a docstring saying what it owns"


@pytest.mark.parametrize("source, expected", [
    ("from nc_probe.analysis.pipeline import analyze_checkpoint\n", "analysis is above stats"),
    ("def f():\n    from nc_probe.cli import app\n", "cli is above stats"),
    ("from ..render import html\n", "render is above stats"),
    ("from nc_probe.core.text import _private_helper\n", "takes private _private_helper"),
])
def test_the_checker_catches_an_upward_import(tmp_path, source, expected):
    # a module planted in the stats stage: each of these must be reported
    planted = tmp_path / "nc_probe" / "stats" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text(source)
    found = violations(planted, "nc_probe.stats.planted")
    assert any(expected in v for v in found), found


def test_the_checker_accepts_a_downward_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("from nc_probe.core.errors import InputError\nfrom nc_probe.metrics import collapse\n")
    assert violations(planted, "nc_probe.stats.planted") == []


def test_the_readme_layout_lists_every_stage_in_this_order():
    """The README's "Layout" section is the floor plan a newcomer reads: every stage, as ``name/``, in STAGES order,
    and nothing more; it names this test as what keeps the order."""
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme[readme.index("### Layout"):]
    section = section[:section.index("\n#", 1)] if "\n#" in section[1:] else section
    listed = re.findall(r"^\s*\d+\. `(\w+)/`", section, re.M)
    assert listed == list(STAGES), listed
    assert "tests/test_layout.py" in section
