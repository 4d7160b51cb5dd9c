"""``nc-probe gate INPUT --rule ...`` and ``nc-probe baseline INPUT -o baseline.json``: the CI regression gate.

A thin shell over :mod:`nc_probe.gate`. Both commands take the analysis options of ``analyze`` (the same
parameters, reused from its signature), so a checkpoint is analyzed exactly as ``analyze`` would.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typing_extensions import Annotated

from .. import gate as g
from ..errors import InputError
from ..metrics import CATALOG, SCALAR_KEYS
from . import analyze as _analyze
from .outputs import OutputSet

OUTPUT = "Output"
RULES = "Rules"

RULES_HELP = (
    "[bold]Rules[/]: METRIC OP LIMIT, OP one of <=, >=, <, >; quote them in the shell.\n\n"
    "Absolute: 'nc1<=0.05', 'acc_ncc>=0.95'.\n\n"
    "Relative to --baseline (b = the baseline's value): 'nc1<=baseline+10%' (nc1 may rise at most 10%: b + 0.10*|b|), "
    "'rate_reduction>=baseline-5%' (may fall at most 5%), 'nc1<=baseline*1.1', 'acc_ncc>=baseline-0.01' "
    "(absolute offset), 'nc4<=baseline'.\n\n"
    "Rules come from --rule, plus the \\[tool.nc-probe.gate] table of ./pyproject.toml (or of --config FILE "
    "instead): rules = [\"nc1<=0.05\", \"nc1<=baseline+10%\"] and optionally baseline = \"baseline.json\" "
    "(relative to that file).\n\n"
    "Exit codes: 0 every rule holds; 1 a rule failed; 2 usage or input error, or a rule that cannot be checked "
    "because its metric is absent (null) in the report or the baseline, e.g. nc3 without a classifier.\n\n"
    "[bold]Metrics[/] (↓/↑: the way each moves as the features get more collapsed, separated, ...; see "
    "docs/metrics.md): " + ", ".join(f"{k} {CATALOG[k].arrow}".rstrip() for k in SCALAR_KEYS) + ".\n\n"
    "[bold]Examples[/]: nc-probe gate model.pt -r 'nc1<=0.05' -r 'acc_ncc>=0.9' --junit gate.xml; "
    "nc-probe baseline main.pt -o baseline.json, then nc-probe gate model.pt -b baseline.json "
    "-r 'nc1<=baseline+10%' -r 'rate_reduction>=baseline-5%'. See docs/gate.md."
)


def _report(input: Path, quiet: bool, analysis: dict):
    from ..inputs import report_for

    settings, ckpt = _analyze.analysis_arguments(analysis, quiet)
    return report_for(input, checkpoint_options=ckpt, **settings)


@_analyze.with_analysis_options
def gate(
    input: Annotated[Path, typer.Argument(
        help="Checkpoint, feature file (.safetensors/.npz/.pt with features+labels) or report JSON.",
        show_default=False)],
    rule: Annotated[Optional[List[str]], typer.Option(
        "--rule", "-r", help="A rule such as 'nc1<=0.05' or 'nc1<=baseline+10%' (repeatable; see below).",
        show_default=False, rich_help_panel=RULES)] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Read \\[tool.nc-probe.gate] rules (and baseline) from this TOML file instead of "
                         "./pyproject.toml.", rich_help_panel=RULES)] = None,
    baseline: Annotated[Optional[Path], typer.Option(
        "--baseline", "-b", help="Baseline JSON of relative rules (from nc-probe baseline, or a report JSON).",
        rich_help_panel=RULES)] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML here (a testcase per rule).",
                                                  rich_help_panel=OUTPUT)] = None,
    markdown: Annotated[Optional[Path], typer.Option(
        "--markdown", help="Write a Markdown summary here, e.g. \"$GITHUB_STEP_SUMMARY\".",
        rich_help_panel=OUTPUT)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only broken rules and errors (stderr).",
                                        rich_help_panel=OUTPUT)] = False,
    **analysis,
):
    """Fail a CI job when a metric breaks a rule: exit 0 all rules hold, 1 a rule failed, 2 usage or input error."""
    from ..cli import err_console

    cli_rules = g.parse_rules(rule or [])
    if config is not None:
        cfg = g.load_config(config)
    elif Path("pyproject.toml").is_file():
        cfg = g.load_config("pyproject.toml", table_required=False)
    else:
        cfg = g.GateConfig([])
    rules = g.merge_rules(cfg.rules, cli_rules)
    if not rules:
        raise InputError("no rules to check", fix="pass --rule 'nc1<=0.05' or add rules to the tool.nc-probe.gate "
                                                  "table of pyproject.toml")
    baseline_path = baseline if baseline is not None else cfg.baseline
    relative = [r.text for r in rules if r.relative]
    if relative and baseline_path is None:
        raise InputError(f"rule(s) {', '.join(relative)} compare with a baseline but none is given",
                         fix="pass --baseline baseline.json (write one with nc-probe baseline INPUT -o baseline.json)")
    base = g.load_baseline(baseline_path) if baseline_path is not None else None

    outputs = OutputSet({"--junit": junit, "--markdown": markdown}, inputs=[input, baseline_path, config])
    report = _report(input, quiet, analysis)
    results = g.evaluate(report, rules, base)
    notes = g.baseline_warnings(report, base) if base is not None else []
    with outputs.transaction() as staged:
        if junit is not None:
            g.write_junit(results, staged["--junit"],
                          properties={"input": str(input), "baseline": baseline_path,
                                      "nc_probe_version": report.inputs.get("nc_probe_version")})
        if markdown is not None:
            g.write_markdown(results, staged["--markdown"], source=str(input),
                             baseline=None if baseline_path is None else str(baseline_path), notes=notes)
    if not quiet:
        console = _console()
        console.print(_table(results, input, base is not None))
        console.print(g.summary(results), style=_STYLE[_VERDICT[g.exit_code(results)]])
    for note in notes:
        err_console.print(f"[yellow]warning:[/] {escape(note)}", soft_wrap=True)
    for r in results:
        if r.verdict == g.FAIL:
            err_console.print(f"[bold red]failed:[/] {r.rule.text}: {escape(r.message)}", soft_wrap=True)
        elif r.verdict == g.ERROR:
            err_console.print(f"[bold red]error:[/] {r.rule.text}: {escape(r.message)}", soft_wrap=True)
    code = g.exit_code(results)
    if code:
        raise typer.Exit(code)


def _console() -> Console:
    """stdout; 120 columns in CI logs (not a terminal), so that the numbers of the table are never cut."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    return console


_VERDICT = {0: g.PASS, 1: g.FAIL, 2: g.ERROR}
_STYLE = {g.PASS: "bold green", g.FAIL: "bold red", g.ERROR: "bold yellow"}


def _table(results, input, with_baseline: bool) -> Table:
    table = Table(title=f"nc-probe gate: {escape(str(input))}", title_justify="left")
    table.add_column("metric", style="cyan", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    for col in ("value", "limit") + (("baseline", "change") if with_baseline else ()):
        table.add_column(col, justify="right", no_wrap=True, overflow="fold")
    table.add_column("verdict", no_wrap=True)
    for r in results:
        cells = [r.rule.metric, r.rule.condition, g.format_number(r.value), g.format_number(r.limit)]
        if with_baseline:
            cells += [g.format_number(r.baseline), "" if r.change is None else f"{r.change:+.1%}"]
        table.add_row(*cells, f"[{_STYLE[r.verdict]}]{r.verdict.upper()}[/]")
    return table


@_analyze.with_analysis_options
def baseline(
    input: Annotated[Path, typer.Argument(help="Checkpoint, feature file or report JSON.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the baseline JSON.",
                                         rich_help_panel=OUTPUT)] = Path("baseline.json"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.",
                                        rich_help_panel=OUTPUT)] = False,
    **analysis,
):
    """Write the baseline of relative gate rules: the scalar metrics of INPUT and the settings they depend on."""
    outputs = OutputSet({"--output": output}, inputs=[input])
    report = _report(input, quiet, analysis)
    b = g.make_baseline(report)
    with outputs.transaction() as staged:
        g.save_baseline(b, staged["--output"])
    if not quiet:
        absent = [k for k, v in b.metrics.items() if v is None]
        text = f"wrote {output}: {len(b.metrics) - len(absent)} metrics of {input}"
        if absent:
            text += f" ({', '.join(absent)} absent)"
        _console().print(text, soft_wrap=True)


def register(app: typer.Typer, user_errors) -> None:
    app.command("gate", epilog=RULES_HELP)(user_errors(gate))
    app.command("baseline")(user_errors(baseline))
