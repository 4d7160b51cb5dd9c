"""``nc-probe layers [CHECKPOINT]``: every selected layer of a model in one forward pass; depth laws; print and
write."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nc_probe.cli import options as o
from nc_probe.cli.shell import out_console, user_errors, warn
from nc_probe.core.progress import phase, shown

Checkpoint = Annotated[Path | None, typer.Argument(
    help="Checkpoint (.pt/.pth/.ckpt/.safetensors with --arch), a shipped sample (sample:ce, sample:deep, ...), or "
         "a layer report JSON (nc-probe layers --json, or layers.json of --out) to show and write again without "
         "the model. Default: sample:deep.", show_default=False)]
OutDir = Annotated[Path | None, o.option(
    "--out", "Write layers.json and the tidy table layers.csv (model, layer, depth, metric, value) into this "
             "folder; --format parquet or json for the table.", o.OUTPUT)]
Format = Annotated[str | None, o.option(
    "--format", "The tidy table as csv, parquet (needs pyarrow) or json: into --out DIR, or (csv, json) printed "
                "instead of the summary [default: csv with --out; else the summary].", o.OUTPUT)]


def layers(
    checkpoint: Checkpoint = None,
    json_path: o.JsonOut = None, out: OutDir = None, fmt: Format = None, plots: o.PlotsOut = None,
    html: o.HtmlOut = None, quiet: o.Quiet = False,
    layers: o.Layers = None, pool: o.Pool = None, max_dim: o.MaxDim = None,
    eps2: o.Eps2 = None, subspace_dim: o.SubspaceDim = None, rank_tol: o.RankTol = None, classes: o.Classes = None,
    memory_budget: o.MemoryBudget = None, min_class_count: o.MinClassCount = None,
    angle_classes: o.AngleClasses = None, angle_precision: o.AnglePrecision = None, matrices: o.Matrices = None,
    nearest_subspace: o.NearestSubspace = False, mahalanobis: o.Mahalanobis = False,
    arch: o.Arch = None, arch_kwargs: o.ArchKwargs = None, strip_prefix: o.StripPrefix = None,
    trust_checkpoint: o.TrustCheckpoint = False,
    data: o.Data = None, split: o.Split = None, limit: o.Limit = None, data_classes: o.DataClasses = None,
    image_size: o.ImageSize = None, mean: o.Mean = None, std: o.Std = None, class_map: o.ClassMap = None,
    seq_len: o.SeqLen = None,
    device: o.Device = None, batch_size: o.BatchSize = None, workers: o.Workers = None,
    amp: o.Amp = None, spill_threshold: o.SpillThreshold = None,
) -> None:
    """Analyze every selected layer of a model (collapse, rate reduction, ranks, NCC and linear-probe accuracy
    through depth), fit the depth law of the separation fuzziness D_l and find where accuracy stops improving. Given
    a layer report JSON, show it and write its table, plots, page or folder again, without the model."""
    from nc_probe.analysis.layers import analyze_layers
    from nc_probe.cli.outputs import OutputSet, settings_inputs
    from nc_probe.load.samples import DEFAULT_LAYER_SAMPLE
    from nc_probe.render.layer_outputs import check_layer_format, render_layers, write_layer_outputs

    settings = o.build_settings(locals())
    source = checkpoint if checkpoint is not None else Path(DEFAULT_LAYER_SAMPLE)
    saved = _is_layer_json(source)
    check_layer_format(fmt, out)
    outputs = OutputSet({"--json": json_path, "--out": out, "--plots": plots, "--html": html},
                        dirs=("--out", "--plots"), inputs=[source, *settings_inputs(settings)])
    if saved:
        _ignored_settings(locals())
    with shown(not quiet), outputs.transaction() as staged:  # the display ends before the report is printed
        report = _read_layer_report(source) if saved else analyze_layers(str(source), settings, progress=not quiet)
        with phase("writing outputs"):
            if json_path is not None:
                report.save(staged["--json"])
            text = write_layer_outputs(report, out=staged.get("--out"), fmt=fmt, plots=staged.get("--plots"),
                                       html=staged.get("--html"), spell=o.flag_name)
    if text is not None or quiet:  # stdout holds the exported table, or nothing: the warnings go to stderr
        if text is not None:
            typer.echo(text, nl=False)
        for w in report.all_warnings():
            warn(w)
    else:
        render_layers(report, out_console, spell=o.flag_name, warn=warn)


def _is_layer_json(source: Path) -> bool:
    """A layer report to re-render rather than a model to analyse: a .json input (read as a layer report, which
    says what is wrong when it is not one)."""
    return source.suffix.lower() == ".json"


def _read_layer_report(source: Path):
    from nc_probe.core.errors import InputError
    from nc_probe.reports.layer_report import LayerReport, is_layer_report

    try:
        return LayerReport.load(source)
    except InputError as e:
        from nc_probe.core.files import read_json

        try:
            data = read_json(source, "layer report", fix="")
        except InputError:
            raise e from None
        if isinstance(data, dict) and "metrics" in data and not is_layer_report(data):
            raise InputError("is a single-layer report, not a layer report: it has no layers", path=source,
                             fix="show it with nc-probe analyze, or pass the model's nc-probe layers --json") from None
        raise


def _ignored_settings(values: dict) -> None:
    """A saved layer report is shown as it is: settings that would change its numbers have no effect."""
    from nc_probe.core.settings import FIELD_GROUP

    given = [o.flag_name(k, None) for k, v in values.items()
             if k in FIELD_GROUP and v is not None and v is not False]
    if given:
        warn(f"{', '.join(given)} ignored: a saved layer report is shown and written as it is; analyse the model "
             "again to change its settings")


def register(app: typer.Typer) -> None:
    app.command("layers", cls=o.Command)(user_errors(layers))
