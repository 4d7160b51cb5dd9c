"""The gate's results as CI reads them: JUnit XML, a Markdown summary (for ``$GITHUB_STEP_SUMMARY``) and the
terminal table. ``spell`` spells the settings that messages name (see :mod:`nc_probe.core.errors`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rich.table import Table

from nc_probe.core.errors import parameter_name
from nc_probe.core.errors import spell as spell_text
from nc_probe.core.files import atomic_write_text
from nc_probe.core.text import format_number
from nc_probe.reports.gate import ERROR, FAIL, PASS, Result, exit_code, summary

Namer = Callable[[str, "str | None"], str]


def junit_xml(results: Sequence[Result], *, name: str = "nc-probe gate", properties: Mapping | None = None,
              spell: Namer = parameter_name) -> str:
    """JUnit XML: one testsuite, one testcase per rule (a <failure> when it fails, an <error> when unchecked)."""
    import xml.etree.ElementTree as ET

    counts = {"tests": str(len(results)), "failures": str(sum(r.verdict == FAIL for r in results)),
              "errors": str(sum(r.verdict == ERROR for r in results)), "skipped": "0"}
    suites = ET.Element("testsuites", {"name": name, **counts})
    suite = ET.SubElement(suites, "testsuite", {"name": name, **counts})
    if properties:
        props = ET.SubElement(suite, "properties")
        for k, v in properties.items():
            if v is not None:
                ET.SubElement(props, "property", {"name": str(k), "value": str(v)})
    for r in results:
        case = ET.SubElement(suite, "testcase", {"classname": f"nc-probe.gate.{r.rule.metric}", "name": r.rule.text})
        message = spell_text(r.message, spell)
        if r.verdict == FAIL:
            ET.SubElement(case, "failure", {"message": message, "type": "RuleFailed"}).text = message
        elif r.verdict == ERROR:
            ET.SubElement(case, "error", {"message": message, "type": "MetricAbsent"}).text = message
        else:
            ET.SubElement(case, "system-out").text = message
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write_junit(results: Sequence[Result], path, **kwargs) -> Path:
    return atomic_write_text(path, junit_xml(results, **kwargs))


_MARK = {PASS: "✅ pass", FAIL: "❌ fail", ERROR: "⚠️ error"}


def markdown(results: Sequence[Result], *, title: str = "nc-probe gate", source: str | None = None,
             baseline: str | None = None, notes: Sequence[str] = (), spell: Namer = parameter_name) -> str:
    """A Markdown summary (for ``$GITHUB_STEP_SUMMARY``): a verdict line, the rule table, and the messages."""
    code = exit_code(results)
    head = {0: "✅ passed", 1: "❌ failed", 2: "⚠️ error"}[code]
    lines = [f"### {title}: {head}", ""]
    if source:
        lines.append(f"Input: `{source}`" + (f" · baseline: `{baseline}`" if baseline else ""))
        lines.append("")
    with_baseline = any(r.baseline is not None for r in results)
    cols = ["metric", "rule", "value", "limit"] + (["baseline", "change"] if with_baseline else []) + ["verdict"]
    lines += ["| " + " | ".join(cols) + " |", "|---|---|" + "---:|" * (len(cols) - 3) + "---|"]
    for r in results:
        cells = [f"`{r.rule.metric}`", f"`{r.rule.condition}`", format_number(r.value, 6), format_number(r.limit, 6)]
        if with_baseline:
            cells += [format_number(r.baseline, 6), "" if r.change is None else f"{r.change:+.1%}"]
        lines.append("| " + " | ".join(cells + [_MARK[r.verdict]]) + " |")
    lines += ["", summary(results)]
    bad = [r for r in results if r.verdict != PASS]
    if bad or notes:
        lines.append("")
    lines += [f"- **{r.rule.text}**: {spell_text(r.message, spell).replace('|', '/')}" for r in bad]
    lines += [f"- note: {spell_text(n, spell)}" for n in notes]
    return "\n".join(lines) + "\n"


def write_markdown(results: Sequence[Result], path, **kwargs) -> Path:
    return atomic_write_text(path, markdown(results, **kwargs))


# ------------------------------------------------------------------------------------------------- terminal
VERDICT_STYLE = {PASS: "bold green", FAIL: "bold red", ERROR: "bold yellow"}


def results_table(results: Sequence[Result], source, with_baseline: bool) -> Table:
    """A rich Table: metric, rule, value, limit (baseline and change when there is one), verdict."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"nc-probe gate: {escape(str(source))}", title_justify="left")
    table.add_column("metric", style="cyan", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    for col in ("value", "limit") + (("baseline", "change") if with_baseline else ()):
        table.add_column(col, justify="right", no_wrap=True, overflow="fold")
    table.add_column("verdict", no_wrap=True)
    for r in results:
        cells = [r.rule.metric, r.rule.condition, format_number(r.value, 6), format_number(r.limit, 6)]
        if with_baseline:
            cells += [format_number(r.baseline, 6), "" if r.change is None else f"{r.change:+.1%}"]
        table.add_row(*cells, f"[{VERDICT_STYLE[r.verdict]}]{r.verdict.upper()}[/]")
    return table


def print_results(results: Sequence[Result], source, with_baseline: bool, console) -> None:
    """The table and the one-line verdict."""
    console.print(results_table(results, source, with_baseline))
    console.print(summary(results), style=VERDICT_STYLE[{0: PASS, 1: FAIL, 2: ERROR}[exit_code(results)]])
