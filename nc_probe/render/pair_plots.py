"""Views of many classes, where a C x C heatmap or a bar per class is unreadable (and, at C = 18,000, unbuildable).

Above ``HEATMAP_LIMIT`` classes (see :mod:`nc_probe.render.pair_data`), a class-pair quantity (``angle_min``,
``subspace_affinity``, ``mean_cosine``, ``cdnv``) is drawn as the distribution of its pair values (a histogram of the
matrix's upper triangle when the report kept the matrix, else the quantile curve of ``report.pairs[key]``) beside a
bar chart of the most extreme pairs by name. Above ``CLASS_LIMIT`` classes, per-class values are drawn sorted (one
line) and spectra as bands over classes. Every drawing here is a handful of artists, whatever C is; matrices are read
in row blocks, never copied whole.
"""

from __future__ import annotations

import warnings

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nc_probe.render.pair_data import (
    PAIR_KEYS,
    TOP_SHOWN,
    as_values,
    pair_matrix,
    pair_summary,
    quantile_curve,
    top_from_matrix,
    upper_histogram,
    upper_mean,
)

CDF_BINS = 400  # the resolution of a CDF computed from a matrix
NAME_CHARS = 24  # class names longer than this are shortened in the top-pair labels
DPI = 100


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _short(name) -> str:
    s = str(name)
    return s if len(s) <= NAME_CHARS else s[:NAME_CHARS - 1] + "…"


# ---------------------------------------------------------------------------------------------- drawing
def draw_distribution(ax, key: str, mat: np.ndarray | None, summary: dict | None, refs=()) -> None:
    """The histogram of a matrix's pair values, or (no matrix) the summary's quantile curve; reference lines
    ``refs`` [(value, label)] and the mean."""
    label = PAIR_KEYS[key][0]
    mean: float | None
    counts, edges = upper_histogram(mat) if mat is not None else (np.zeros(0), np.zeros(1))
    if counts.sum() or summary is None:
        ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.75, label="class pairs")
        ax.set_ylabel("class pairs")
        mean = upper_mean(mat) if mat is not None else None
        ax.set_title(f"Distribution of {int(counts.sum()):,} class pairs", fontsize=10)
    else:  # no matrix (or none of its values finite): the summary's quantiles
        x, p = quantile_curve(summary)
        ax.plot(x, p, "o-", color="tab:blue", ms=4, lw=1.5, label="quantiles")
        ax.set_ylabel("fraction of pairs <= value")
        ax.set_ylim(0, 1)
        mean = summary.get("mean")
        ax.set_title(f"Quantiles of {int(summary['count']):,} class pairs ({summary.get('quantile_method')}; "
                     "matrix not kept)", fontsize=10)
    if mean is not None:
        ax.axvline(mean, color="0.2", ls="--", lw=1, label=f"mean {mean:.3g}")
    styles = [("tab:red", ":"), ("tab:purple", "-.")]
    for (value, text), (color, ls) in zip(refs, styles):
        ax.axvline(value, color=color, ls=ls, lw=1, label=text)
    ax.set_xlabel(label)
    ax.legend(fontsize=7, loc="best")


def draw_top_pairs(ax, key: str, top: list[dict], kind: str) -> None:
    """Horizontal bars of the most extreme pairs, labelled 'a – b', the most extreme first."""
    top = top[:TOP_SHOWN]
    vals = [float(t["value"]) for t in top]
    ax.barh(np.arange(len(top)), vals, color="tab:orange")
    ax.set_yticks(range(len(top)), [f"{_short(t['a_name'])} – {_short(t['b_name'])}" for t in top], fontsize=7)
    ax.invert_yaxis()
    for container in ax.containers:
        ax.bar_label(container, labels=[f"{v:.3g}" for v in vals], fontsize=6, padding=2)
    ax.margins(x=0.15)
    ax.set_xlabel(PAIR_KEYS[key][0])
    ax.set_title(f"The {len(top)} {PAIR_KEYS[key][1]}\n({kind} {key})", fontsize=10)


def pair_figure(key: str, mat: np.ndarray | None, summary: dict | None, ids: list, names: list[str], *,
                refs=(), title: str = "") -> Figure:
    """Two panels: the distribution of the pair values, and the most extreme pairs by name."""
    kind = (summary or {}).get("top_kind") or PAIR_KEYS[key][2]
    top = list((summary or {}).get("top") or [])
    if not top and mat is not None:
        top = top_from_matrix(mat, ids, names, kind)
    fig = new_figure(11, 4.4)
    ax_d, ax_t = fig.subplots(1, 2, width_ratios=[1.2, 1])
    draw_distribution(ax_d, key, mat, summary, refs)
    draw_top_pairs(ax_t, key, top, kind)
    fig.suptitle(title, fontsize=11)
    fig.nc_probe_view = "distribution"  # type: ignore[attr-defined]  # read by the HTML captions
    return fig


def cdf_of(report, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(values, fractions) of a pair quantity: from the matrix when kept, else from the summary's quantiles."""
    mat, ids = pair_matrix(report, key)
    if mat is not None and len(ids) >= 2:
        counts, edges = upper_histogram(mat, CDF_BINS)
        if counts.sum():
            return edges, np.concatenate([[0.0], np.cumsum(counts) / counts.sum()])
    summary = pair_summary(report, key)
    return quantile_curve(summary) if summary else None


def compare_pair_cdf(reports: dict, key: str, refs=()) -> Figure:
    """One CDF per input of a pair quantity (the view of many classes): comparable whatever each report kept."""
    fig = new_figure(7.5, 4.4)
    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]
    for j, (label, rep) in enumerate(reports.items()):
        curve = cdf_of(rep, key)
        if curve is None:
            label += " (not in this report)"
            curve = (np.empty(0), np.empty(0))
        ax.plot(*curve, color=colormaps["tab10"](j % 10), ls=styles[j % len(styles)], lw=1.6, label=label)
    for (value, text), color in zip(refs, ("tab:red", "tab:purple")):
        ax.axvline(value, color=color, ls=":", lw=1, label=text)
    ax.set_ylim(0, 1)
    ax.set_xlabel(PAIR_KEYS[key][0])
    ax.set_ylabel("fraction of class pairs <= value")
    ax.set_title(f"{key}: distribution over class pairs, per input", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(title="input", fontsize=8)
    fig.nc_probe_view = "distribution"  # type: ignore[attr-defined]
    return fig


def draw_sorted(ax, values, names: list[str], color="tab:blue", label=None, annotate: bool = True) -> None:
    """Per-class values sorted from the highest, one line; the highest and lowest classes named."""
    v = as_values(values)
    order = np.argsort(-np.where(np.isfinite(v), v, -np.inf), kind="stable")
    order = order[np.isfinite(v[order])]
    ax.plot(np.arange(1, order.size + 1), v[order], color=color, lw=1.5, label=label)
    if annotate and order.size:
        for rank, i, va in ((1, order[0], "bottom"), (order.size, order[-1], "top")):
            ax.annotate(_short(names[i]), (rank, v[i]), xytext=(0, 4 if va == "bottom" else -4),
                        textcoords="offset points", fontsize=7, va=va, ha="left" if rank == 1 else "right")
    ax.set_xlabel("class rank (highest first)")


def draw_spectrum_bands(ax, spec: np.ndarray) -> None:
    """Per-class spectra as bands over classes: median line, 25..75% and min..max."""
    x = np.arange(1, spec.shape[1] + 1)
    with warnings.catch_warnings():  # all-NaN columns (components no class reaches) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        q = np.nanquantile(spec, [0.0, 0.25, 0.5, 0.75, 1.0], axis=0) if spec.size else np.full((5, 0), np.nan)
    ax.fill_between(x, q[0], q[4], color="tab:blue", alpha=0.15, lw=0, label="min..max over classes")
    ax.fill_between(x, q[1], q[3], color="tab:blue", alpha=0.35, lw=0, label="25..75% of classes")
    ax.plot(x, q[2], color="tab:blue", lw=1.8, label=f"median of {spec.shape[0]:,} classes")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
