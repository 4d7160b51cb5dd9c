"""The user-facing documents agree with the metric catalog, and nothing a user reads points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from nc_probe.cli.app import app
from nc_probe.metrics import CATALOG, SCALAR_KEYS

REPO = Path(__file__).resolve().parent.parent
METRICS_MD = REPO / "docs" / "metrics.md"


def _glance_rows() -> dict[str, str]:
    """key -> the direction cell of docs/metrics.md's "At a glance" table."""
    text = METRICS_MD.read_text()
    table = text[text.index("## At a glance"):]
    rows = {}
    for line in table.splitlines():
        if not line.startswith("| `"):
            if rows and not line.startswith("|"):
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        for key in re.findall(r"`([A-Za-z0-9_]+)`", cells[0]):
            rows[key] = cells[3]
    return rows


def test_metrics_md_states_every_direction_of_the_catalog():
    rows = _glance_rows()
    assert set(rows) == set(CATALOG), set(rows) ^ set(CATALOG)
    for key, m in CATALOG.items():
        want = f"{m.direction} = {m.word}" if m.direction else "none"
        assert rows[key].startswith(want), (key, rows[key], want)


def test_gate_docs_and_help_list_every_scalar_metric():
    gate_md = (REPO / "docs" / "gate.md").read_text()
    help_text = CliRunner().invoke(app, ["gate", "--help"], terminal_width=400).output
    for key in SCALAR_KEYS:
        assert f"`{key}`" in gate_md, key
        assert key in help_text, key


def test_nothing_a_user_reads_points_outside_the_repository():
    readable = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "nc_probe").rglob("*.py")),
                *sorted((REPO / "examples").glob("*"))]
    for path in readable:
        assert "shared/metrics-spec" not in path.read_text(), path
    assert "docs/metrics.md" in (REPO / "README.md").read_text()
    help_text = CliRunner().invoke(app, ["analyze", "--help"], terminal_width=400).output
    assert "docs/metrics.md" in help_text


def test_html_footer_names_the_metric_reference():
    from nc_probe.render.html import html_page

    page = html_page("t", "")
    assert "docs/metrics.md" in page and "shared/" not in page
