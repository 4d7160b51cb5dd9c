"""The house rules, checked: imports flow one way (no cycles, nothing below the CLI imports it), modules stay small,
long functions say why they are long."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nc_probe"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
LONG_REASON = "# long:"  # a comment in the function's first lines that says why it is long


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every nc_probe module a file imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("nc_probe"):
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names)  # "from . import stats"
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("nc_probe"))
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    graph = {}
    for name, path in files.items():
        graph[name] = {t for t in _imports(path) if t in files and t != name}
    return graph


def test_no_import_cycles():
    graph = _graph()
    graph["nc_probe"] = set()  # the package's lazy exports import on first use, not at import
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_nothing_below_the_cli_imports_it():
    for name, targets in _graph().items():
        if name.startswith(("nc_probe.cli", "nc_probe.cli.app", "nc_probe.entry", "nc_probe.__main__")):
            continue
        bad = {t for t in targets if t.startswith(("nc_probe.cli.app", "nc_probe.cli"))}
        assert not bad, (name, bad)


def test_modules_and_functions_stay_small():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE)}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                head = "\n".join(lines[node.lineno - 1: node.lineno + 15])
                if size > MAX_FUNCTION_LINES and LONG_REASON not in head:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {size} lines")
    assert not too_long, "\n".join(too_long)
