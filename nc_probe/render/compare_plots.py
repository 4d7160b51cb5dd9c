"""matplotlib figures of a Comparison (``nc-probe compare``): several reports side by side, one colour per input."""

from __future__ import annotations

import warnings

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from nc_probe.render import pair_data as pdata
from nc_probe.render import pair_plots as pp
from nc_probe.render.plots import (
    ANGLE_KEYS,
    COLLAPSE_KEYS,
    RATE_KEYS,
    angle_reference_lines,
    angle_references,
    class_labels,
    class_ticks,
    etf_target,
    heatmap,
    log_floor,
    metric_value,
    new_figure,
    outside_legend,
    spectrum_array,
)
from nc_probe.reports.report import Report


def _input_colors(n: int):
    return [colormaps["tab10"](i % 10) for i in range(n)]


def compare_metrics(reports: dict[str, Report]) -> Figure:
    """Grouped bars per metric, one colour per input: collapse metrics (log), coding rates, angles."""
    labels = list(reports)
    colors = _input_colors(len(labels))
    fig = new_figure(12, 4.0)
    ax_nc, ax_rate, ax_ang = fig.subplots(1, 3, width_ratios=[1.8, 1, 0.7])
    width = 0.8 / len(labels)
    panels = [(ax_nc, [k for k in COLLAPSE_KEYS if any(r.metrics.get(k) is not None for r in reports.values())]),
              (ax_rate, [k for k in RATE_KEYS if any(r.metrics.get(k) is not None for r in reports.values())]),
              (ax_ang, [k for k in ANGLE_KEYS if any(r.metrics.get(k) is not None for r in reports.values())])]
    floor = log_floor([metric_value(r.metrics.get(k)) for r in reports.values() for k in panels[0][1]])
    for ax, keys in panels:
        for j, (label, rep) in enumerate(reports.items()):
            vals = np.array([metric_value(rep.metrics.get(k)) for k in keys])
            if ax is ax_nc:
                vals = np.clip(vals, floor, None)
            ax.bar(np.arange(len(keys)) + (j - (len(labels) - 1) / 2) * width, vals, width, color=colors[j],
                   label=label)
        ax.set_xticks(range(len(keys)), keys, rotation=60 if ax is ax_nc else 20, ha="right", fontsize=8)
    ax_nc.set_yscale("log")
    ax_nc.set_ylim(bottom=floor)
    ax_nc.set_ylabel("value (log scale; 0 = collapsed)")
    ax_nc.set_title("Neural collapse NC1-NC4")
    ax_rate.set_ylabel("nats")
    ax_rate.set_title("MCR^2 coding rates")
    ax_ang.set_ylabel("degrees")
    angle_reference_lines(ax_ang, next(iter(reports.values())).inputs.get("num_classes"))
    ax_ang.set_title("Subspace angles")
    fig.legend(*ax_nc.get_legend_handles_labels(), title="input", fontsize=8, loc="outside right upper")
    fig.suptitle("NC metrics side by side: " + " vs ".join(labels), fontsize=11)
    return fig


def compare_spectra(reports: dict[str, Report]) -> Figure:
    """Overlaid spectra: per input, the mean over classes of the normalized eigenvalues, shaded min..max band."""
    fig = new_figure(6.4, 4.2)
    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]
    for j, (color, (label, rep)) in enumerate(zip(_input_colors(len(reports)), reports.items())):
        spec = spectrum_array(rep.per_class.get("spectrum"))
        if spec.size == 0:
            continue
        x = np.arange(1, spec.shape[1] + 1)
        with warnings.catch_warnings():  # all-NaN columns (classes with short spectra) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, lo, hi = np.nanmean(spec, 0), np.nanmin(spec, 0), np.nanmax(spec, 0)
        ax.plot(x, mean, color=color, lw=1.8, ls=styles[j % len(styles)], label=f"{label} (mean over classes)")
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("component j (eigenvalues in decreasing order)")
    ax.set_ylabel("normalized eigenvalue  lambda_j / sum lambda")
    ax.set_title("Per-class spectra of unit features (band: min..max over classes)", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def compare_heatmaps(reports: dict[str, Report], key: str = "angle_min") -> Figure:
    """``angle_min`` (or ``mean_cosine``, then with the simplex ETF target last) heatmaps side by side on one colour
    scale; inputs lacking it are blank. With many classes (or a report without the matrix), one distribution curve
    per input instead."""
    if any(pdata.pair_view(rep, key) == "distribution" for rep in reports.values()):
        C = next(iter(reports.values())).inputs.get("num_classes") or 0
        refs = angle_references(C) if key == "angle_min" else (
            [(-1 / (C - 1), "ETF -1/(C-1)")] if key == "mean_cosine" and C >= 2 else [])
        return pp.compare_pair_cdf(reports, key, refs)
    n = len(reports) + (key == "mean_cosine")
    fig = new_figure(4.2 * n + 1.2, 4.4)
    axes = np.atleast_1d(fig.subplots(1, n))
    im = None
    if key == "mean_cosine":
        first = next(iter(reports.values()))
        ids = first.per_class.get("class_ids") or []
        heatmap(axes[-1], etf_target(len(ids)), class_labels(first, ids), vmin=-1, vmax=1, cmap="RdBu_r", fmt="{:.2f}",
                annotate=len(ids) <= 6)
        axes[-1].set_title("simplex ETF target", fontsize=10)
        axes[-1].set_xlabel("class")
        axes[-1].set_ylabel("class")
    for ax, (label, rep) in zip(axes, reports.items()):
        if key == "angle_min":
            mat, ids = rep.angles.get("angle_min"), rep.angles.get("class_ids") or []
            kw = dict(vmin=0, vmax=90, cmap="viridis")
        else:
            mat, ids = rep.per_class.get(key), rep.per_class.get("class_ids") or []
            kw = dict(vmin=-1, vmax=1, cmap="RdBu_r", fmt="{:.2f}")
        ax.set_title(label, fontsize=10)
        if mat is None:
            ax.text(0.5, 0.5, "not in this report", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        im = heatmap(ax, mat, class_labels(rep, ids), annotate=len(ids) <= 6, **kw)
        ax.set_xlabel("class")
        ax.set_ylabel("class")
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.9,
                     label="smallest principal angle (degrees)" if key == "angle_min" else "cosine")
    fig.suptitle("Smallest principal angle between class subspaces" if key == "angle_min"
                 else "Class-mean cosines (centered means)", fontsize=11)
    return fig


def compare_coding_rate(reports: dict[str, Report]) -> Figure:
    """Grouped bars of R_c per class, one colour per input; sorted lines (one per input) for many classes."""
    labels = list(reports)
    first = next(iter(reports.values()))
    ids = first.per_class.get("subspace_class_ids") or []
    names = class_labels(first, ids)
    width = 0.8 / len(labels)
    fig = new_figure(7.5, 4.0)
    ax = fig.subplots()
    if any(len(r.per_class.get("subspace_class_ids") or []) > pdata.CLASS_LIMIT for r in reports.values()):
        for color, (label, rep) in zip(_input_colors(len(labels)), reports.items()):
            pp.draw_sorted(ax, rep.per_class.get("coding_rate_class"),
                           class_labels(rep, rep.per_class.get("subspace_class_ids") or []), color=color, label=label,
                           annotate=False)
        ax.set_ylabel("R_c (nats)")
        ax.set_title(f"MCR^2 coding rate per class, sorted ({len(ids):,} classes)")
        outside_legend(ax, title="input")
        fig.nc_probe_view = "sorted"  # type: ignore[attr-defined]  # read by the HTML captions
        return fig
    for j, (color, (label, rep)) in enumerate(zip(_input_colors(len(labels)), reports.items())):
        lookup = dict(zip(rep.per_class.get("subspace_class_ids") or [], rep.per_class.get("coding_rate_class") or []))
        vals = [metric_value(lookup.get(c)) for c in ids]
        ax.bar(np.arange(len(ids)) + (j - (len(labels) - 1) / 2) * width, vals, width, color=color, label=label)
    class_ticks(ax, names, axis="x")
    ax.set_xlabel("class")
    ax.set_ylabel("R_c (nats)")
    ax.set_title("MCR^2 coding rate per class")
    outside_legend(ax, title="input")
    return fig


def cka_heatmap(labels: list[str], matrix) -> Figure:
    """Linear CKA between the inputs' representations (blank where two inputs do not share samples)."""
    n = len(labels)
    fig = new_figure(1.2 * n + 3.0, 1.0 * n + 2.2)
    ax = fig.subplots()
    im = heatmap(ax, matrix, labels, vmin=0, vmax=1, cmap="viridis", fmt="{:.3f}", annotate=True)
    fig.colorbar(im, ax=ax, label="linear CKA")
    ax.set_xlabel("input")
    ax.set_ylabel("input")
    ax.set_title("Linear CKA between representations", fontsize=10)
    return fig


def comparison_figures(comparison) -> dict[str, Figure]:
    """The views of a :class:`nc_probe.reports.compare.Comparison`, by name."""
    reports = comparison.reports
    figs = {"metrics": compare_metrics(reports)}
    if any(pdata.has_rows(r.per_class.get("spectrum")) for r in reports.values()):
        figs["spectra"] = compare_spectra(reports)
    for key in ("angle_min", "mean_cosine"):
        if any(pdata.pair_view(r, key) for r in reports.values()):
            figs[key] = compare_heatmaps(reports, key)
    if any(pdata.has_rows(r.per_class.get("coding_rate_class")) for r in reports.values()):
        figs["coding_rate"] = compare_coding_rate(reports)
    cka = comparison.cka
    if cka:
        keep = [i for i, row in enumerate(cka["matrix"]) if any(v is not None for j, v in enumerate(row) if j != i)]
        if keep:
            figs["cka"] = cka_heatmap([cka["labels"][i] for i in keep],
                                      [[cka["matrix"][i][j] for j in keep] for i in keep])
    return figs
