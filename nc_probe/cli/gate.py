"""``nc-probe gate INPUT --rule ...`` and ``nc-probe baseline INPUT -o baseline.json``: the CI regression gate.

A thin shell over :mod:`nc_probe.reports.gate` (rules, baselines, verdicts) and :mod:`nc_probe.render.gate` (JUnit,
Markdown, the table). Both commands take the analysis options of ``analyze`` (the same option types), so a
checkpoint is analyzed exactly as ``analyze`` would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from nc_probe.cli import options as o
from nc_probe.cli.outputs import OutputSet, settings_inputs
from nc_probe.cli.shell import cli_text, err_console, user_errors, warn
from nc_probe.core.consoles import console as safe_console
from nc_probe.core.errors import InputError
from nc_probe.core.progress import phase, shown
from nc_probe.metrics import CATALOG, SCALAR_KEYS

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

Input = Annotated[Path, typer.Argument(
    help="Checkpoint, feature file (.safetensors/.npz/.pt with features+labels), report JSON or sample:NAME.",
    show_default=False)]
Rule = Annotated[list[str] | None, o.option(
    "--rule", "A rule such as 'nc1<=0.05' or 'nc1<=baseline+10%' (repeatable, added to the config file's rules; "
              "see below).", RULES, "-r")]
Config = Annotated[Path | None, o.option(
    "--config", "Read [tool.nc-probe.gate] rules (and baseline) from this TOML file [default: ./pyproject.toml].",
    RULES)]
BaselineIn = Annotated[Path | None, o.option(
    "--baseline", "Baseline JSON of relative rules (from nc-probe baseline, or a report JSON) [default: the "
                  "config file's baseline, if any].", RULES, "-b")]
Junit = Annotated[Path | None, o.option("--junit", "Write JUnit XML here (a testcase per rule).", o.OUTPUT)]
Markdown = Annotated[Path | None, o.option(
    "--markdown", "Write a Markdown summary here, e.g. \"$GITHUB_STEP_SUMMARY\".", o.OUTPUT)]
GateQuiet = Annotated[bool, o.switch("--quiet", "Print only broken rules and errors (stderr) [default: off].",
                                     o.OUTPUT, "-q")]
BaselineOut = Annotated[Path, o.option("--output", "Where to write the baseline JSON [default: baseline.json].",
                                       o.OUTPUT, "-o")]


def gate(
    input: Input, rule: Rule = None, config: Config = None, baseline: BaselineIn = None, junit: Junit = None,
    markdown: Markdown = None, quiet: GateQuiet = False,
    eps2: o.Eps2 = None, subspace_dim: o.SubspaceDim = None, rank_tol: o.RankTol = None, classes: o.Classes = None,
    memory_budget: o.MemoryBudget = None, min_class_count: o.MinClassCount = None,
    angle_classes: o.AngleClasses = None, angle_precision: o.AnglePrecision = None, matrices: o.Matrices = None,
    linear_probe: o.LinearProbe = False, nearest_subspace: o.NearestSubspace = False,
    mahalanobis: o.Mahalanobis = False,
    arch: o.Arch = None, arch_kwargs: o.ArchKwargs = None, strip_prefix: o.StripPrefix = None,
    trust_checkpoint: o.TrustCheckpoint = False,
    data: o.Data = None, split: o.Split = None, limit: o.Limit = None, data_classes: o.DataClasses = None,
    image_size: o.ImageSize = None, mean: o.Mean = None, std: o.Std = None, class_map: o.ClassMap = None,
    seq_len: o.SeqLen = None,
    layer: o.Layer = None, device: o.Device = None, batch_size: o.BatchSize = None, workers: o.Workers = None,
    amp: o.Amp = None, spill_threshold: o.SpillThreshold = None,
) -> None:
    """Fail a CI job when a metric breaks a rule: exit 0 all rules hold, 1 a rule failed, 2 usage or input error."""
    from nc_probe.analysis.inputs import report_for
    from nc_probe.render.gate import print_results, write_junit, write_markdown
    from nc_probe.reports import gate as g  # numpy: imported when a command runs, not for --help

    settings = o.build_settings(locals())
    rules, baseline_path = _rules(rule, config, baseline)
    base = g.load_baseline(baseline_path) if baseline_path is not None else None
    outputs = OutputSet({"--junit": junit, "--markdown": markdown},
                        inputs=[input, baseline_path, config, *_implicit_config(config), *settings_inputs(settings)])
    with shown(not quiet):
        report = report_for(input, settings, progress=not quiet)
    results = g.evaluate(report, rules, base)
    notes = g.baseline_warnings(report, base) if base is not None else []
    with shown(not quiet), outputs.transaction() as staged, phase("writing outputs"):
        if junit is not None:
            write_junit(results, staged["--junit"], spell=o.flag_name,
                        properties={"input": str(input), "baseline": baseline_path,
                                    "nc_probe_version": report.inputs.get("nc_probe_version")})
        if markdown is not None:
            write_markdown(results, staged["--markdown"], source=str(input), notes=notes, spell=o.flag_name,
                           baseline=None if baseline_path is None else str(baseline_path))
    if not quiet:
        print_results(results, input, base is not None, _console())
    for note in notes:
        warn(note)
    for r in results:
        if r.verdict in (g.FAIL, g.ERROR):
            label = "failed" if r.verdict == g.FAIL else "error"
            err_console.print(f"[bold red]{label}:[/] {r.rule.text}: {escape(cli_text(r.message))}", soft_wrap=True)
    code = g.exit_code(results)
    if code:
        raise typer.Exit(code)


def _rules(rule, config, baseline) -> tuple[list, Path | None]:
    """The rules of --rule and the TOML configuration, and the baseline path (checked: relative rules need one)."""
    from nc_probe.reports import gate as g

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
    return rules, baseline_path


def _implicit_config(config) -> list[Path]:
    """./pyproject.toml when the gate reads its rules from there (no --config)."""
    return [Path("pyproject.toml")] if config is None and Path("pyproject.toml").is_file() else []


def _console() -> Console:
    """stdout; 120 columns in CI logs (not a terminal), so that the numbers of the table are never cut."""
    console = safe_console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    return console


def baseline(
    input: Input, output: BaselineOut = Path("baseline.json"), quiet: o.Quiet = False,
    eps2: o.Eps2 = None, subspace_dim: o.SubspaceDim = None, rank_tol: o.RankTol = None, classes: o.Classes = None,
    memory_budget: o.MemoryBudget = None, min_class_count: o.MinClassCount = None,
    angle_classes: o.AngleClasses = None, angle_precision: o.AnglePrecision = None, matrices: o.Matrices = None,
    linear_probe: o.LinearProbe = False, nearest_subspace: o.NearestSubspace = False,
    mahalanobis: o.Mahalanobis = False,
    arch: o.Arch = None, arch_kwargs: o.ArchKwargs = None, strip_prefix: o.StripPrefix = None,
    trust_checkpoint: o.TrustCheckpoint = False,
    data: o.Data = None, split: o.Split = None, limit: o.Limit = None, data_classes: o.DataClasses = None,
    image_size: o.ImageSize = None, mean: o.Mean = None, std: o.Std = None, class_map: o.ClassMap = None,
    seq_len: o.SeqLen = None,
    layer: o.Layer = None, device: o.Device = None, batch_size: o.BatchSize = None, workers: o.Workers = None,
    amp: o.Amp = None, spill_threshold: o.SpillThreshold = None,
) -> None:
    """Write the baseline of relative gate rules: the scalar metrics of INPUT and the settings they depend on."""
    from nc_probe.analysis.inputs import report_for
    from nc_probe.reports import gate as g

    settings = o.build_settings(locals())
    outputs = OutputSet({"--output": output}, inputs=[input, *settings_inputs(settings)])
    with shown(not quiet):
        report = report_for(input, settings, progress=not quiet)
    b = g.make_baseline(report)
    with outputs.transaction() as staged:
        g.save_baseline(b, staged["--output"])
    if not quiet:
        absent = [k for k, v in b.metrics.items() if v is None]
        text = f"wrote {output}: {len(b.metrics) - len(absent)} metrics of {input}"
        if absent:
            text += f" ({', '.join(absent)} absent)"
        _console().print(text, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("gate", epilog=RULES_HELP, cls=o.Command)(user_errors(gate))
    app.command("baseline", cls=o.Command)(user_errors(baseline))
