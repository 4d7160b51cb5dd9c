"""``nc-probe analyze [INPUT]``: analyze a checkpoint, a feature file, a report or a sample; print and write."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nc_probe.cli import options as o
from nc_probe.cli.shell import out_console, user_errors, warn
from nc_probe.core.progress import phase, shown
from nc_probe.metrics import CATALOG

METRICS_HELP = (
    "Metrics (docs/metrics.md in nc-probe's repository defines each; ↓/↑ is the way it moves as the features get "
    "more collapsed, separated, compressed, ...):\n\n"
    + "\n\n".join(f"[bold]{m.key}[/] {m.arrow} {m.word or '(no direction)'}: {m.doc}" for m in CATALOG.values()))

Input = Annotated[Path | None, typer.Argument(
    help="Checkpoint (.pt/.pth/.ckpt/.safetensors/.pt2), feature file (.safetensors/.npz/.pt with features+labels; "
         "or features alone: the label-free measures), "
         "report JSON, or a shipped sample: sample:ce, sample:mcr2, sample:ce_epoch20, ... Default: sample:ce.",
    show_default=False)]
OutDir = Annotated[Path | None, o.option(
    "--out", "Write report.json, metrics.csv, per_class.csv, angles.csv and pairs.csv (the most extreme class "
             "pairs) into this folder.", o.OUTPUT)]
Format = Annotated[str | None, o.option(
    "--format", "Tables as csv, parquet (needs pyarrow), markdown or json: into --out DIR, or (text formats, "
                "without --out) printed instead of the summary [default: csv with --out; else the summary].",
    o.OUTPUT)]


def analyze(
    input: Input = None,
    json_path: o.JsonOut = None, out: OutDir = None, fmt: Format = None, plots: o.PlotsOut = None,
    html: o.HtmlOut = None, quiet: o.Quiet = False,
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
    amp: o.Amp = None, spill_threshold: o.SpillThreshold = None, save_features: o.SaveFeatures = None,
) -> None:
    """Analyze a checkpoint, feature file or report and print the metrics."""
    from nc_probe.analysis.inputs import report_for
    from nc_probe.analysis.splits import parse_splits
    from nc_probe.cli.outputs import OutputSet, settings_inputs
    from nc_probe.load.samples import DEFAULT_SAMPLE
    from nc_probe.render.exports import check_output_options, write_outputs
    from nc_probe.render.terminal import render_report

    splits = parse_splits(split)
    settings = o.build_settings({**locals(), "split": None} if splits else locals())
    source = input if input is not None else Path(DEFAULT_SAMPLE)
    if splits:
        _analyze_splits(source, splits, settings, json_path, out, fmt, plots, html, save_features, data, quiet)
        return
    check_output_options(fmt, out)
    outputs = OutputSet({"--json": json_path, "--out": out, "--plots": plots, "--html": html,
                         "--save-features": save_features}, dirs=("--out", "--plots"),
                        inputs=[source, *settings_inputs(settings)])
    with shown(not quiet), outputs.transaction() as staged:  # the display ends before the report is printed
        report = report_for(source, settings, save_features=staged.get("--save-features"), progress=not quiet)
        if save_features is not None and report.inputs.get("features_file"):
            report.inputs["features_file"] = str(save_features)  # where it will be, not where it is staged
        with phase("writing outputs"):
            if json_path is not None:
                report.save(staged["--json"])
            text = write_outputs(report, out=staged.get("--out"), fmt=fmt, plots=staged.get("--plots"),
                                 html=staged.get("--html"), spell=o.flag_name)
    if text is not None or quiet:  # stdout holds the exported table, or nothing: the warnings go to stderr
        if text is not None:
            typer.echo(text, nl=False)
        for w in report.warnings:
            warn(w)
    else:
        render_report(report, out_console, spell=o.flag_name, warn=warn)


def _analyze_splits(source, splits, settings, json_path, out, fmt, plots, html, save_features, data, quiet) -> None:
    """``--split train,test``: both splits side by side (a comparison) with the test-collapse measures."""
    from nc_probe.analysis.inputs import input_kind
    from nc_probe.analysis.splits import analyze_splits
    from nc_probe.cli.compare import write_comparison
    from nc_probe.cli.outputs import OutputSet, settings_inputs
    from nc_probe.core.errors import InputError

    for flag, value in (("--out", out), ("--format", fmt), ("--save-features", save_features)):
        if value is not None:
            raise InputError(f"{flag} writes one split's report; with two splits the result is a comparison",
                             fix="write it with --json, --html or --plots, or analyze one --split at a time")
    if input_kind(source) != "checkpoint":
        raise InputError("two splits need a checkpoint to run on its data; this input is not one", path=source,
                         fix="pass the checkpoint, or analyze the feature files of each split with compare")
    outputs = OutputSet({"--json": json_path, "--html": html, "--plots": plots}, dirs=("--plots",),
                        inputs=[source, *settings_inputs(settings)])
    comparison = analyze_splits(str(source), settings, splits=splits, progress=not quiet)
    write_comparison(comparison, outputs, quiet)


def register(app: typer.Typer) -> None:
    app.command("analyze", epilog=METRICS_HELP, cls=o.Command)(user_errors(analyze))
