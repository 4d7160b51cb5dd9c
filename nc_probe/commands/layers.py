"""``nc-probe layers [CHECKPOINT]``: every selected layer of a model in one forward pass; depth laws; print and
write."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import options as o
from .shell import out_console, user_errors

Checkpoint = Annotated[Path | None, typer.Argument(
    help="Checkpoint (.pt/.pth/.ckpt/.safetensors with --arch) or a shipped sample (sample:ce, sample:deep, ...). "
         "Default: sample:deep.", show_default=False)]
OutDir = Annotated[Path | None, typer.Option(
    "--out", help="Write layers.json and the tidy table layers.csv (model, layer, depth, metric, value) into this "
                  "folder; --format parquet or json for the table.", rich_help_panel=o.OUTPUT)]
Format = Annotated[str | None, typer.Option(
    "--format", help="The tidy table as csv, parquet (needs pyarrow) or json: into --out DIR, or (csv, json) "
                     "printed instead of the summary.", rich_help_panel=o.OUTPUT)]


def layers(
    checkpoint: Checkpoint = None,
    json_path: o.JsonOut = None, out: OutDir = None, fmt: Format = None, plots: o.PlotsOut = None,
    html: o.HtmlOut = None, quiet: o.Quiet = False,
    layers: o.Layers = None, pool: o.Pool = None, max_dim: o.MaxDim = None,
    eps2: o.Eps2 = None, subspace_dim: o.SubspaceDim = None, rank_tol: o.RankTol = None, classes: o.Classes = None,
    memory_budget: o.MemoryBudget = None, min_class_count: o.MinClassCount = None,
    angle_classes: o.AngleClasses = None, angle_precision: o.AnglePrecision = None, matrices: o.Matrices = None,
    arch: o.Arch = None, arch_kwargs: o.ArchKwargs = None, strip_prefix: o.StripPrefix = None,
    trust_checkpoint: o.TrustCheckpoint = False,
    data: o.Data = None, split: o.Split = None, limit: o.Limit = None, data_classes: o.DataClasses = None,
    image_size: o.ImageSize = None, mean: o.Mean = None, std: o.Std = None, class_map: o.ClassMap = None,
    device: o.Device = None, batch_size: o.BatchSize = None, workers: o.Workers = None,
    amp: o.Amp = None, spill_threshold: o.SpillThreshold = None,
) -> None:
    """Analyze every selected layer of a model (collapse, rate reduction, ranks, NCC and linear-probe accuracy
    through depth), fit the depth law of the separation fuzziness D_l and find where accuracy stops improving."""
    from ..layer_analysis import analyze_layers
    from ..render.layer_outputs import check_layer_format, render_layers, write_layer_outputs
    from ..samples import DEFAULT_LAYER_SAMPLE
    from .outputs import OutputSet, settings_inputs

    settings = o.build_settings(locals())
    source = checkpoint if checkpoint is not None else Path(DEFAULT_LAYER_SAMPLE)
    check_layer_format(fmt, out)
    outputs = OutputSet({"--json": json_path, "--out": out, "--plots": plots, "--html": html},
                        dirs=("--out", "--plots"), inputs=[source, *settings_inputs(settings)])
    with outputs.transaction() as staged:
        report = analyze_layers(str(source), settings, progress=not quiet)
        if json_path is not None:
            report.save(staged["--json"])
        text = write_layer_outputs(report, out=staged.get("--out"), fmt=fmt, plots=staged.get("--plots"),
                                   html=staged.get("--html"))
    if text is not None:
        typer.echo(text, nl=False)
    elif not quiet:
        render_layers(report, out_console, spell=o.flag_name)


def register(app: typer.Typer) -> None:
    app.command("layers")(user_errors(layers))
