"""``nc-probe trajectory CKPT... | DIR | GLOB``: every metric of a series of checkpoints against the epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nc_probe.cli import options as o
from nc_probe.cli.shell import err_console, out_console, user_errors, warn
from nc_probe.core.progress import phase, shown

DEFAULT_SERIES = ["sample:ce_epoch*", "sample:ce"]

Checkpoints = Annotated[list[str] | None, typer.Argument(
    help="Checkpoints, folders of checkpoints, globs ('runs/*/epoch_*.pt', quoted) or samples (sample:ce_epoch*), "
         "ordered by the epoch in their metadata, else in their file names, else as given. Default: the shipped "
         "cross-entropy series, sample:ce_epoch* and sample:ce.", show_default=False)]
OutDir = Annotated[Path | None, o.option(
    "--out", "Write trajectory.csv (checkpoint, epoch, split, metric, value), trajectory.json and reports/ (each "
             "checkpoint's reports, written as soon as it is done: a later run with the same checkpoints and "
             "settings reads them back instead of analysing again).", o.OUTPUT)]


def trajectory(
    checkpoints: Checkpoints = None,
    json_path: o.JsonOut = None, out: OutDir = None, plots: o.PlotsOut = None, html: o.HtmlOut = None,
    quiet: o.Quiet = False,
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
    """Analyze a series of checkpoints (one at a time) and show every metric against the epoch: NC1-NC4 on log
    scales as in Papyan, Han & Donoho 2020; with --split train,test, train and test curves and the test-collapse
    measures."""
    from nc_probe.analysis.splits import parse_splits
    from nc_probe.analysis.trajectory import expand_inputs, run_trajectory
    from nc_probe.cli.outputs import OutputSet, settings_inputs
    from nc_probe.render.trajectory_outputs import trajectory_table, trajectory_warnings, write_trajectory_outputs

    splits = parse_splits(split)
    settings = o.build_settings({**locals(), "split": None} if splits else locals())
    series = expand_inputs(checkpoints or DEFAULT_SERIES)
    # every checkpoint of the series is an input: no output may land on one. The resume cache (--out/reports) is
    # written as each checkpoint finishes, so that an interrupted run resumes; the rest of the set is staged.
    outputs = OutputSet({"--out": out, "--json": json_path, "--plots": plots, "--html": html},
                        dirs=("--out", "--plots"), inputs=[*series, *settings_inputs(settings)])

    def progress(i: int, n: int, label: str, reused: bool) -> None:
        if not quiet:
            err_console.print(f"[{i}/{n}] {label}" + (" (report kept from an earlier run)" if reused else ""),
                              highlight=False)

    with shown(not quiet):  # a row per checkpoint and its phases; the lines above stay as each one ends
        traj = run_trajectory(series, settings, splits=splits,
                              reports_dir=None if out is None else out / "reports", progress=progress)
        with outputs.transaction() as staged, phase("writing outputs"):
            if json_path is not None:
                traj.save(staged["--json"])
            write_trajectory_outputs(traj, out=staged.get("--out"), plots=staged.get("--plots"),
                                     html=staged.get("--html"), spell=o.flag_name)
    if not quiet:
        out_console.print(trajectory_table(traj))
    for w in trajectory_warnings(traj):
        warn(w)


def register(app: typer.Typer) -> None:
    app.command("trajectory", cls=o.Command)(user_errors(trajectory))
