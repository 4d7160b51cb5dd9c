"""``nc-probe compare LABEL=PATH LABEL=PATH [...]``: analyses side by side, with deltas, CKA, plots and HTML."""

from __future__ import annotations

from typing import Annotated

import typer

from nc_probe.cli import options as o
from nc_probe.cli.shell import out_console, user_errors, warn
from nc_probe.core.progress import phase, shown

Cka = Annotated[bool, o.switch("--cka/--no-cka", "Linear CKA between inputs that hold features of the same "
                                                "samples [default: --cka].", o.OUTPUT)]
UnbiasedCka = Annotated[bool, o.switch(
    "--unbiased-cka", "CKA from the unbiased HSIC estimator, which does not drift with the number of samples "
                      "[default: off: Kornblith et al.'s biased one].", o.OUTPUT)]


def compare(
    inputs: o.Inputs, json_path: o.JsonOut = None, html: o.HtmlOut = None, plots: o.PlotsOut = None, cka: Cka = True,
    unbiased_cka: UnbiasedCka = False, quiet: o.Quiet = False,
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
    layers: o.Layers = None, pool: o.Pool = None, max_dim: o.MaxDim = None,
) -> None:
    """Compare analyses side by side: metric deltas (and which way each moved), CKA, plots. With --layers, or
    layer-report JSONs as inputs, compare layer analyses: depth laws side by side and depth curves overlaid."""
    from nc_probe.analysis.compare_inputs import compare_inputs, parse_specs
    from nc_probe.analysis.layer_compare import wants_layers
    from nc_probe.cli.outputs import OutputSet, settings_inputs

    settings = o.build_settings(locals())
    paths = parse_specs(inputs)
    outputs = OutputSet({"--json": json_path, "--html": html, "--plots": plots}, dirs=("--plots",),
                        inputs=[*paths.values(), *settings_inputs(settings)])
    if wants_layers(paths, layers):
        _compare_layers(paths, settings, outputs, json_path, quiet)
        return
    comparison = compare_inputs(inputs, settings, cka=cka, unbiased_cka=unbiased_cka, progress=not quiet)
    write_comparison(comparison, outputs, quiet)


def write_comparison(comparison, outputs, quiet: bool) -> None:
    """A Comparison's --json, --html and --plots (staged, all or nothing), then the table unless quiet."""
    from nc_probe.render.comparison import render_comparison

    with shown(not quiet), outputs.transaction() as staged, phase("writing outputs"):
        if "--plots" in staged or "--html" in staged:
            from nc_probe.render.compare_plots import comparison_figures
            from nc_probe.render.html import write_comparison_html
            from nc_probe.render.plots import write_visuals

            write_visuals(comparison, plots=staged.get("--plots"), html=staged.get("--html"),
                          figures_of=comparison_figures,
                          write_page=lambda c, path, figures: write_comparison_html(c, path, figures, o.flag_name))
        if "--json" in staged:
            comparison.save(staged["--json"])
    if not quiet:
        render_comparison(comparison, out_console, spell=o.flag_name, warn=warn)
    else:
        for w in comparison.all_warnings():
            warn(w)


def _compare_layers(paths, settings, outputs, json_path, quiet: bool) -> None:
    from nc_probe.analysis.layer_compare import compare_layers
    from nc_probe.render.layer_outputs import render_layer_comparison, write_layer_comparison

    comparison = compare_layers(paths, settings, progress=not quiet)
    with shown(not quiet), outputs.transaction() as staged, phase("writing outputs"):
        write_layer_comparison(comparison, plots=staged.get("--plots"), html=staged.get("--html"), spell=o.flag_name)
        if json_path is not None:
            comparison.save(staged["--json"])
    if not quiet:
        render_layer_comparison(comparison, out_console, spell=o.flag_name, warn=warn)
    else:
        for w in comparison.warnings():
            warn(w)


def register(app: typer.Typer) -> None:
    app.command("compare", cls=o.Command)(user_errors(compare))
