"""matplotlib figures of a Report (and of several, for ``compare``): headless, one ``Figure`` per view.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global state, no display, the
Agg canvas), with a title, axis labels and, for colour scales, a colour bar. A figure whose data the report lacks
(no subspace metrics, an old report without ``pca2d``) is left out of :func:`report_figures`.

Views of one report: ``metrics`` (NC metric overview), ``spectra`` (per-class normalized eigenvalue spectra of the
unit features, log scale), ``angle_min`` (principal-angle heatmap), ``mean_cosine`` (centered class-mean cosines
beside the simplex ETF target), ``coding_rate`` (R_c per class), ``pca2d`` (2-D PCA of a feature subsample).

Many classes (see :mod:`nc_probe.render.pair_plots`): above ``HEATMAP_LIMIT`` classes, or when the report kept no
matrix, ``angle_min`` and ``mean_cosine`` are the distribution of the pair values beside the most extreme pairs by
name, and ``subspace_affinity`` and ``cdnv`` join them; above ``CLASS_LIMIT`` classes, ``coding_rate`` is a sorted
line and ``spectra`` bands over classes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)  # headless; a no-op when pyplot already runs another backend

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nc_probe.render import pair_data as pdata  # noqa: E402
from nc_probe.render import pair_plots as pp  # noqa: E402
from nc_probe.render.figure_files import (  # noqa: E402, F401 - re-exported: the renderers take them from here
    PlainLogFormatter,
    figure_bytes,
    figure_data_uri,
    plain_log_ticks,
    save_figures,
    write_visuals,
)
from nc_probe.reports.report import Report  # noqa: E402

COLLAPSE_KEYS = ["nc1", "nc1_cdnv", "nc2_equinorm_M", "nc2_equiangle_M", "nc2_maxangle_M", "nc2_etf_M",
                 "nc2_equinorm_W", "nc2_equiangle_W", "nc2_maxangle_W", "nc2_etf_W", "nc3", "nc4"]
RATE_KEYS = ["coding_rate", "coding_rate_within", "rate_reduction"]
ANGLE_KEYS = ["angle_min_mean", "angle_min_min"]
LOG_FLOOR = 1e-8  # the lowest floor of a log axis: zeros sit a decade below the smallest positive value, or here
SPECTRUM_FLOOR = 1e-10  # spectra are drawn down to this energy fraction (below it: float rounding, not geometry)
TICK_LIMIT = 30  # label at most this many classes on an axis
LEGEND_LIMIT = 10  # above this many classes a colour bar replaces the legend
DPI = pp.DPI
new_figure = pp.new_figure


def class_labels(report: Report, ids) -> list[str]:
    all_ids = report.inputs.get("class_ids") or report.per_class.get("class_ids") or []
    names = report.inputs.get("class_names") or [str(i) for i in all_ids]
    lookup = dict(zip(all_ids, names))
    return [str(lookup.get(i, i)) for i in ids]


def _class_colors(n: int):
    """(colours, colormap or None): tab10 (with a legend) for few classes, viridis (with a colour bar) for many."""
    if n <= LEGEND_LIMIT:
        return [colormaps["tab10"](i) for i in range(n)], None
    cmap = colormaps["viridis"]
    return list(cmap(np.linspace(0, 1, n) if n > 1 else np.zeros(n))), cmap


def class_ticks(ax, names, axis="both"):
    n = len(names)
    if n > TICK_LIMIT:
        return
    if axis in ("x", "both"):
        ax.set_xticks(range(n), names, rotation=90 if n > 10 else 0, fontsize=8 if n > 10 else 9)
    if axis in ("y", "both"):
        ax.set_yticks(range(n), names, fontsize=8 if n > 10 else 9)


def etf_angle(num_classes: int | None) -> float | None:
    """arccos(1/(C-1)) in degrees: the principal angle between two simplex-ETF class means seen as lines."""
    if not num_classes or num_classes < 2:
        return None
    return math.degrees(math.acos(1 / (num_classes - 1)))


def log_floor(values) -> float:
    """Where values <= 0 sit on a log axis: a decade below the smallest positive value (at least LOG_FLOOR)."""
    v = np.asarray(values, dtype=float)
    pos = v[np.isfinite(v) & (v > 0)]
    return max(10 ** np.floor(np.log10(pos.min()) - 1), LOG_FLOOR) if pos.size else LOG_FLOOR


def metric_value(v) -> float:
    return float("nan") if v is None else float(v)


def outside_legend(ax, **kwargs) -> None:
    """The legend right of the plot, outside the axes, so it never covers a bar or a line."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, **kwargs)


ACCURACY_MARGIN = 0.02  # of the axis span: the room an accuracy axis keeps past 0 and 1


def accuracy_axis(ax) -> None:
    """An accuracy's y axis: never beyond [0, 1] by more than a small margin (so points at 1.0 are not on the
    frame), and no tick outside [0, 1]. Call it after the data are drawn."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    lo, hi = ax.get_ylim()
    lo, hi = max(lo, 0.0), min(hi, 1.0)
    if hi - lo < 1e-3:  # one value (e.g. every layer at 1.0): a band under it
        lo = max(0.0, hi - 0.05)
    span = hi - lo
    ax.set_ylim(lo - ACCURACY_MARGIN * span if lo <= 0.0 else lo, hi + ACCURACY_MARGIN * span)
    ticks = MaxNLocator(nbins=6).tick_values(lo, hi)
    ax.yaxis.set_major_locator(FixedLocator([t for t in ticks if lo - 1e-9 <= t <= 1.0 + 1e-9]))


# ---------------------------------------------------------------------------------------------- one report
def metric_overview(report: Report) -> Figure:
    """Three panels: the NC collapse metrics (log scale, 0 = collapsed), MCR^2 coding rates against the isotropic
    maximum, and the mean/min smallest principal angle against the ETF and orthogonal references."""
    m = report.metrics
    fig = new_figure(11, 3.8)
    ax_nc, ax_rate, ax_ang = fig.subplots(1, 3, width_ratios=[1.6, 1, 0.8])

    keys = [k for k in COLLAPSE_KEYS if m.get(k) is not None]
    vals = np.array([metric_value(m[k]) for k in keys])
    floor = log_floor(vals)
    ax_nc.barh(range(len(keys)), np.clip(vals, floor, None), color="tab:blue", label="value")
    ax_nc.set_yticks(range(len(keys)), keys, fontsize=8)
    ax_nc.invert_yaxis()
    ax_nc.set_xscale("log")
    ax_nc.set_xlabel("value (log scale; 0 = collapsed)")
    ax_nc.set_title("Neural collapse NC1-NC4")
    for i, v in enumerate(vals):
        ax_nc.annotate(f"{v:.3g}", (max(v, floor), i), xytext=(3, 0), textcoords="offset points",
                       va="center", fontsize=7)
    ax_nc.margins(x=0.25)

    rkeys = [k for k in RATE_KEYS if m.get(k) is not None]
    labels = {"coding_rate": "R", "coding_rate_within": "Rc", "rate_reduction": "dR = R - Rc"}
    ax_rate.bar(range(len(rkeys)), [metric_value(m[k]) for k in rkeys], color=["tab:green", "tab:orange", "tab:purple"][
        :len(rkeys)])
    ax_rate.set_xticks(range(len(rkeys)), [labels[k] for k in rkeys])
    _bar_labels(ax_rate)
    if m.get("coding_rate_max") is not None:
        ax_rate.axhline(m["coding_rate_max"], color="0.3", ls="--", lw=1, label="R of isotropic features")
        ax_rate.legend(fontsize=7, loc="upper right")
    ax_rate.set_ylabel("nats")
    ax_rate.set_xlabel("MCR^2 coding rate")
    ax_rate.set_title(f"Coding rates (eps^2={report.settings_typed.metrics.eps2})")

    akeys = [k for k in ANGLE_KEYS if m.get(k) is not None]
    ax_ang.bar(range(len(akeys)), [metric_value(m[k]) for k in akeys], color="tab:cyan")
    ax_ang.set_xticks(range(len(akeys)), [k.replace("angle_min_", "") for k in akeys])
    _bar_labels(ax_ang, "{:.1f}")
    angle_reference_lines(ax_ang, report.inputs.get("num_classes"))
    ax_ang.set_ylabel("degrees")
    ax_ang.set_xlabel("smallest principal angle")
    ax_ang.set_title("Class subspace angles")

    acc = ", ".join(f"{k}={m[k]:.3f}" for k in ("acc_model", "acc_ncc") if m.get(k) is not None)
    fig.suptitle(f"NC metric overview: {_source(report)}" + (f" ({acc})" if acc else ""), fontsize=11)
    return fig


def angle_reference_lines(ax, num_classes) -> None:
    """0..100 degrees with reference lines at 90 (orthogonal, MCR^2-like) and the ETF angle (collapsed), named on
    a secondary axis at the right (so they never cover the bars or their labels)."""
    ax.set_ylim(0, 100)
    ax.axhline(90, color="tab:red", ls=":", lw=1)
    ticks, names = [90.0], ["orthogonal"]
    etf = etf_angle(num_classes)
    if etf is not None:
        ax.axhline(etf, color="0.3", ls="--", lw=1)
        ticks, names = [etf, 90], [f"ETF {etf:.0f}", "orthogonal"]
    ref = ax.secondary_yaxis("right")
    ref.set_yticks(ticks, names, fontsize=7)


def _bar_labels(ax, fmt: str = "{:.3g}") -> None:
    for container in ax.containers:
        ax.bar_label(container, labels=[fmt.format(b.get_height()) for b in container], fontsize=7, padding=2)


def _source(report: Report) -> str:
    src = str(report.inputs.get("source") or "report")
    return src if len(src) <= 50 else "..." + src[-47:]


def spectrum_array(spectra) -> np.ndarray:
    """Ragged per-class spectra (lists, or the side file's NaN-padded array) -> (classes, k) float array, NaN where a
    class has fewer values or a zero."""
    if spectra is None:
        return np.full((0, 0), np.nan)
    if isinstance(spectra, np.ndarray):
        out = np.array(spectra, dtype=float).reshape(len(spectra), -1)
    else:
        k = max((len(s) for s in spectra), default=0)
        out = np.full((len(spectra), k), np.nan)
        for i, s in enumerate(spectra):
            out[i, :len(s)] = [np.nan if v is None else v for v in s]
    out[~(out > SPECTRUM_FLOOR)] = np.nan
    return out


def spectra_plot(report: Report) -> Figure:
    """Per-class normalized eigenvalue spectra of the unit features (lambda_j / sum lambda = sigma_j^2 / sum
    sigma^2 of the class's unit-feature matrix), log scale: a collapsed class is one point near 1."""
    pc = report.per_class
    ids = pc.get("subspace_class_ids") or []
    spec = spectrum_array(pc.get("spectrum"))
    fig = new_figure(6.4, 4.2)
    ax = fig.subplots()
    ax.set_yscale("log")
    ax.set_xlabel("component j (eigenvalues in decreasing order)")
    ax.set_ylabel("normalized eigenvalue  lambda_j / sum lambda")
    ax.grid(True, which="major", alpha=0.3)
    if len(spec) > pdata.CLASS_LIMIT:  # many classes: bands over classes, not a line each
        pp.draw_spectrum_bands(ax, spec)
        fig.nc_probe_view = "bands"  # type: ignore[attr-defined]  # read by the HTML captions
        ax.set_title(f"Per-class spectra of unit features (log scale; {len(spec):,} classes)")
        return fig
    ax.set_title("Per-class spectra of unit features (log scale)")
    names = class_labels(report, ids)
    colors, cmap = _class_colors(len(ids))
    x = np.arange(1, spec.shape[1] + 1)
    for i, name in enumerate(names):
        ax.plot(x, spec[i], color=colors[i], lw=1.2, marker="." if spec.shape[1] <= 16 else None,
                label=name if cmap is None else None)
    if cmap is None:
        ax.legend(title="class", fontsize=8, ncols=2 if len(ids) > 5 else 1)
    else:
        fig.colorbar(ScalarMappable(Normalize(0, len(ids) - 1), cmap), ax=ax, label="class (position)")
    return fig


def heatmap(ax, matrix, names, *, vmin, vmax, cmap, annotate: bool | None = None, fmt="{:.0f}") -> Any:
    """A class x class matrix on ``ax`` with class ticks; returns the image (for the colour bar)."""
    mat = pdata.as_matrix(matrix)
    assert mat is not None, "a heatmap needs a matrix"
    im = ax.imshow(mat, vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest")
    class_ticks(ax, names)
    if annotate is None:
        annotate = len(names) <= 10
    if annotate:
        norm = Normalize(vmin, vmax)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if np.isfinite(mat[i, j]):
                    light = norm(mat[i, j]) < 0.5 if cmap == "viridis" else abs(norm(mat[i, j]) - 0.5) > 0.3
                    ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if light else "black")
    return im


def angle_references(num_classes) -> list[tuple[float, str]]:
    etf = etf_angle(num_classes)
    return ([(etf, f"ETF {etf:.1f}")] if etf is not None else []) + [(90.0, "orthogonal 90")]


def pair_distribution(report: Report, key: str) -> Figure:
    """A class-pair quantity of many classes (or without its matrix): distribution and the most extreme pairs."""
    mat, ids = pdata.pair_matrix(report, key)
    C = report.inputs.get("num_classes") or len(report.per_class.get("class_ids") or [])
    refs = {"angle_min": angle_references(C),
            "mean_cosine": [(-1 / (C - 1), f"ETF -1/(C-1) = {-1 / (C - 1):.3g}")] if C >= 2 else []}.get(key, [])
    title = {"angle_min": "Smallest principal angle between class subspaces",
             "subspace_affinity": "Subspace affinity between class subspaces",
             "mean_cosine": "Class-mean cosines (centered means)", "cdnv": "CDNV between class pairs"}[key]
    title += f" ({len(ids):,} of {C:,} classes)" if len(ids) < C and key in ("angle_min", "subspace_affinity") else (
        f" ({C:,} classes)")
    if key == "mean_cosine" and report.metrics.get("nc2_etf_M") is not None:
        title += f"; nc2_etf_M = {report.metrics['nc2_etf_M']:.3g}"
    return pp.pair_figure(key, mat, pdata.pair_summary(report, key), ids, class_labels(report, ids), refs=refs,
                          title=title)


def angle_heatmap(report: Report) -> Figure:
    """The ``angle_min`` matrix (degrees, 0..90) over ``angles["class_ids"]``; its distribution for many classes."""
    if pdata.pair_view(report, "angle_min") == "distribution":
        return pair_distribution(report, "angle_min")
    a = report.angles
    names = class_labels(report, a["class_ids"])
    fig = new_figure(6.0, 5.0)
    ax = fig.subplots()
    im = heatmap(ax, a["angle_min"], names, vmin=0, vmax=90, cmap="viridis")
    fig.colorbar(im, ax=ax, label="smallest principal angle (degrees)")
    ax.set_xlabel("class")
    ax.set_ylabel("class")
    etf = etf_angle(report.inputs.get("num_classes"))
    ax.set_title("Smallest principal angle between class subspaces" + (f"\n(ETF {etf:.0f} deg, orthogonal 90)"
                                                                        if etf is not None else ""), fontsize=10)
    return fig


def etf_target(num_classes: int) -> np.ndarray:
    """The simplex ETF's class-mean cosine matrix: 1 on the diagonal, -1/(C-1) elsewhere."""
    C = num_classes
    return np.where(np.eye(C, dtype=bool), 1.0, -1.0 / (C - 1))


def mean_cosine_plot(report: Report) -> Figure:
    """Cosines of the centered class means beside the simplex ETF target, one colour scale (-1..1); their
    distribution for many classes."""
    if pdata.pair_view(report, "mean_cosine") == "distribution":
        return pair_distribution(report, "mean_cosine")
    cos = report.per_class["mean_cosine"]
    ids = report.per_class["class_ids"]
    names = class_labels(report, ids)
    fig = new_figure(10, 4.6)
    ax_m, ax_t = fig.subplots(1, 2)
    heatmap(ax_m, cos, names, vmin=-1, vmax=1, cmap="RdBu_r", fmt="{:.2f}", annotate=len(ids) <= 8)
    im = heatmap(ax_t, etf_target(len(ids)), names, vmin=-1, vmax=1, cmap="RdBu_r", fmt="{:.2f}",
                 annotate=len(ids) <= 8)
    fig.colorbar(im, ax=[ax_m, ax_t], label="cosine", shrink=0.9)
    ax_m.set_title("Class-mean cosines (centered means)", fontsize=10)
    ax_t.set_title(f"Simplex ETF target (off-diagonal -1/(C-1) = {-1 / (len(ids) - 1):.3f})", fontsize=10)
    for ax in (ax_m, ax_t):
        ax.set_xlabel("class")
        ax.set_ylabel("class")
    etf = report.metrics.get("nc2_etf_M")
    fig.suptitle("Class-mean Gram matrix vs simplex ETF" + (f" (nc2_etf_M = {etf:.3g})" if etf is not None else ""))
    return fig


def coding_rate_plot(report: Report) -> Figure:
    """MCR^2 coding rate R_c of each class, with the count-weighted mean Rc and the total rate R."""
    pc = report.per_class
    ids = pc["subspace_class_ids"]
    names = class_labels(report, ids)
    vals = pdata.as_values(pc["coding_rate_class"])
    fig = new_figure(6.4, 4.0)
    ax = fig.subplots()
    many = len(ids) > pdata.CLASS_LIMIT
    if many:  # a sorted line, not a bar per class
        pp.draw_sorted(ax, vals, names)
        fig.nc_probe_view = "sorted"  # type: ignore[attr-defined]
    else:
        colors, _ = _class_colors(len(ids))
        ax.bar(range(len(ids)), vals, color=colors)
        class_ticks(ax, names, axis="x")
        ax.set_xlabel("class")
    m = report.metrics
    if m.get("coding_rate_within") is not None:
        ax.axhline(m["coding_rate_within"], color="0.2", ls="--", lw=1, label=f"Rc = {m['coding_rate_within']:.3g}")
    if m.get("coding_rate") is not None:
        ax.axhline(m["coding_rate"], color="tab:red", ls=":", lw=1, label=f"R (all classes) = {m['coding_rate']:.3g}")
    if ax.get_legend_handles_labels()[0]:
        outside_legend(ax)
    ax.set_ylabel("R_c (nats)")
    ax.set_ylim(0, max([v for v in vals if np.isfinite(v)] + [m.get("coding_rate") or 0, 1e-9]) * 1.15)
    ax.set_title(f"MCR^2 coding rate per class (eps^2={report.settings_typed.metrics.eps2})"
                 + (f"\n{len(ids):,} classes, sorted" if many else ""))
    return fig


def pca_plot(report: Report) -> Figure:
    """The stored 2-D PCA projection of a feature subsample, coloured by class."""
    p = report.per_class["pca2d"]
    pts = np.asarray(p["points"], dtype=float).reshape(-1, 2)
    labels = np.asarray(p["labels"], dtype=np.int64)
    ids = report.per_class["class_ids"]
    names = class_labels(report, ids)
    pos = {c: i for i, c in enumerate(ids)}
    idx = np.array([pos.get(int(v), 0) for v in labels], dtype=np.int64)
    colors, cmap = _class_colors(len(ids))
    fig = new_figure(6.4, 5.0)
    ax = fig.subplots()
    size = 10 if len(pts) <= 1000 else 5
    if cmap is None:
        for i, name in enumerate(names):
            sel = idx == i
            ax.scatter(pts[sel, 0], pts[sel, 1], s=size, color=colors[i], label=name, alpha=0.8, linewidths=0)
        ax.legend(title="class", fontsize=8, markerscale=2, ncols=2 if len(ids) > 5 else 1)
    else:
        sc = ax.scatter(pts[:, 0], pts[:, 1], s=size, c=idx, cmap=cmap, vmin=0, vmax=len(ids) - 1, alpha=0.8,
                        linewidths=0)
        fig.colorbar(sc, ax=ax, label="class (position)")
    r = p.get("explained_variance_ratio") or [float("nan")] * 2
    ax.set_xlabel(f"PC1 ({100 * r[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * r[1]:.1f}% of variance)")
    ax.set_title(f"2-D PCA of features ({len(pts)} of {report.inputs.get('num_samples')} samples)")
    ax.set_aspect("equal", adjustable="datalim")
    return fig


def label_free_overview(report: Report) -> Figure:
    """The label-free measures of unlabelled features: the effective ranks against d, and alpha_req."""
    m = report.metrics
    fig = new_figure(8, 3.4)
    ax_rank, ax_alpha = fig.subplots(1, 2, width_ratios=[2, 1])
    keys = [k for k in ("rankme", "rank_effective_total", "lidar") if m.get(k) is not None]
    ax_rank.bar(range(len(keys)), [metric_value(m[k]) for k in keys], color="tab:blue")
    ax_rank.set_xticks(range(len(keys)), keys, fontsize=8)
    _bar_labels(ax_rank)
    d = report.inputs.get("dim")
    if isinstance(d, int):
        ax_rank.axhline(d, color="0.3", ls="--", lw=1, label=f"d = {d}")
        ax_rank.legend(fontsize=7, loc="upper right")
    ax_rank.set_ylabel("dimensions")
    ax_rank.set_title("Effective ranks (lower = more collapsed)")
    if m.get("alpha_req") is not None:
        ax_alpha.bar([0], [metric_value(m["alpha_req"])], color="tab:orange")
        _bar_labels(ax_alpha)
    ax_alpha.set_xticks([0] if m.get("alpha_req") is not None else [], ["alpha_req"] if m.get("alpha_req")
                        is not None else [])
    ax_alpha.set_ylabel("higher = more collapsed", fontsize=8)
    ax_alpha.set_title("Spectral decay")
    fig.suptitle(f"Label-free measures: {_source(report)}", fontsize=11)
    return fig


def report_figures(report: Report) -> dict[str, Figure]:
    """Every view the report has data for, by name (the file stem of :func:`save_figures`)."""
    pc = report.per_class
    if report.inputs.get("labels") is False:  # features without labels: their label-free measures only
        return {"label_free": label_free_overview(report)}
    figs = {"metrics": metric_overview(report)}
    if pdata.has_rows(pc.get("spectrum")):
        figs["spectra"] = spectra_plot(report)
    if pdata.pair_view(report, "angle_min"):
        figs["angle_min"] = angle_heatmap(report)
    if pdata.pair_view(report, "mean_cosine"):
        figs["mean_cosine"] = mean_cosine_plot(report)
    for key in ("subspace_affinity", "cdnv"):  # no heatmap of their own; for many classes, their distributions
        if pdata.pair_view(report, key) and len(pdata.pair_ids(report, key)) > pdata.HEATMAP_LIMIT:
            figs[key] = pair_distribution(report, key)
    if pdata.has_rows(pc.get("coding_rate_class")):
        figs["coding_rate"] = coding_rate_plot(report)
    if pc.get("pca2d") and pc["pca2d"].get("points"):
        figs["pca2d"] = pca_plot(report)
    return figs


def save_plots(report: Report, out_dir, formats=("png", "svg")) -> list[Path]:
    """:func:`report_figures` of ``report`` written into ``out_dir``."""
    return save_figures(report_figures(report), out_dir, formats)
