"""matplotlib figures of layer reports: metrics against depth, one line per model (``nc-probe layers``, and
``compare`` of layer reports).

Views: ``fuzziness`` (D_l on a log scale with the fitted law ln D_l = a - rho * l), ``rates`` (R, Rc and dR per layer,
as in the CRATE and ReduNet figures), ``ranks`` (mean per-class rank and the layer's numerical rank),
``accuracy`` (nearest-class-center and linear-probe accuracy, with the layer after which each stops improving),
``collapse`` (nc1, nc1_cdnv and the ETF distance of the means, log scale).
"""

from __future__ import annotations

import math

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nc_probe.render.plots import LOG_FLOOR, accuracy_axis
from nc_probe.reports.layer_report import LayerReport

TICK_NAMES = 24  # up to this many layers the x axis names them; beyond, depth numbers
STYLES = ("-", "--", "-.", ":")
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


def depth_figures(reports: dict[str, LayerReport]) -> dict[str, Figure]:
    """Every view, each with one line (or set of lines) per labelled report; views without data are left out."""
    figs = {"fuzziness": _fuzziness(reports), "rates": _series(reports, "rates"), "ranks": _series(reports, "ranks"),
            "accuracy": _accuracy(reports), "collapse": _series(reports, "collapse"),
            "cka": _cka(next(iter(reports.values()))) if len(reports) == 1 else None}
    return {k: f for k, f in figs.items() if f is not None}


SERIES = {
    "rates": ("MCR^2 coding rates through depth", "nats", False,
              [("coding_rate", "R"), ("coding_rate_within", "Rc"), ("rate_reduction", "dR = R - Rc")]),
    "ranks": ("Ranks through depth", "dimensions", True,
              [("rank_energy95_mean", "per-class rank_energy95 (mean)"),
               ("rank_numerical_total", "numerical rank of the layer")]),
    "collapse": ("Collapse through depth (0 = collapsed)", "value (log scale)", True,
                 [("nc1", "nc1"), ("nc1_cdnv", "nc1_cdnv"), ("nc2_etf_M", "nc2_etf_M")]),
    "accuracy": ("Accuracy through depth", "accuracy", False,
                 [("acc_ncc", "nearest class center"), ("acc_linear_probe", "linear probe")]),
}


def _new(title: str, ylabel: str, log: bool) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(7.2, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    return fig, ax


def _xaxis(ax: Axes, reports: dict[str, LayerReport]) -> None:
    first = next(iter(reports.values()))
    depths = [layer["depth"] for layer in first.layers]
    same = all(r.names == first.names for r in reports.values())
    if same and len(depths) <= TICK_NAMES:
        ax.set_xticks(depths, first.names, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("layer (forward order)")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # depths are whole layers
        ax.set_xlabel("depth l (layers in forward order)")


def _points(report: LayerReport, key: str, log: bool) -> tuple[list, list]:
    xs, ys = [], []
    for layer in report.layers:
        v = layer["metrics"].get(key)
        if v is None or not math.isfinite(v):
            continue
        xs.append(layer["depth"])
        ys.append(max(v, LOG_FLOOR) if log else v)
    return xs, ys


def _series(reports: dict[str, LayerReport], view: str, decorate=None, legend_title: str | None = None
            ) -> Figure | None:
    """One line per (model, key) of the view; ``decorate(ax, report, key, color, style)`` adds to each line."""
    title, ylabel, log, keys = SERIES[view]
    fig, ax = _new(title, ylabel, log)
    drawn = 0
    for m, (label, report) in enumerate(reports.items()):
        for k, (key, name) in enumerate(keys):
            xs, ys = _points(report, key, log)
            if xs:
                tag = name if len(reports) == 1 else f"{label}: {name}"
                style, color = STYLES[m % len(STYLES)], COLORS[k % len(COLORS)]
                ax.plot(xs, ys, style, marker="o", ms=3.5, color=color, label=tag)
                if decorate is not None:
                    decorate(ax, report, key, color, style)
                drawn += 1
    if not drawn:
        return None
    _xaxis(ax, reports)
    ax.legend(fontsize=8, title=legend_title, title_fontsize=8)
    return fig


def _fuzziness(reports: dict[str, LayerReport]) -> Figure | None:
    fig, ax = _new("Separation fuzziness D_l = Tr(Sigma_W Sigma_B^+) through depth", "D_l (log scale)", True)
    drawn = 0
    for m, (label, report) in enumerate(reports.items()):
        xs, ys = _points(report, "D_l", True)
        if not xs:
            continue
        color = COLORS[m % len(COLORS)]
        ax.plot(xs, ys, "o", color=color, label=label if len(reports) > 1 else "D_l")
        law = report.laws.get("D_l") or {}
        if law.get("rho") is not None:
            fit = [math.exp(law["a"] - law["rho"] * x) for x in xs]
            r2 = law.get("r2")
            ax.plot(xs, fit, "-", color=color, alpha=0.7,
                    label=f"{label + ': ' if len(reports) > 1 else ''}fit rho={law['rho']:.3g}"
                          + (f", R^2={r2:.3f}" if r2 is not None else ""))
        drawn += 1
    if not drawn:
        return None
    _xaxis(ax, reports)
    ax.legend(fontsize=8)
    return fig


def _accuracy(reports: dict[str, LayerReport]) -> Figure | None:
    def plateau_line(ax, report, key, color, style):
        plateau = report.laws.get(f"plateau_{key}")
        if plateau:
            ax.axvline(plateau["depth"], color=color, ls=style, alpha=0.35, lw=1)

    fig = _series(reports, "accuracy", plateau_line, "vertical lines: no gain after")
    if fig is not None:
        accuracy_axis(fig.axes[0])
    return fig


def _cka(report: LayerReport) -> Figure | None:
    """The layer-by-layer linear CKA heatmap of one model (Kornblith et al. 2019, figure 2)."""
    cka = report.cka
    if not cka or len(cka["layers"]) < 2:
        return None
    import numpy as np

    names = cka["layers"]
    M = np.array([[np.nan if v is None else v for v in row] for row in cka["matrix"]], dtype=float)
    size = min(3.5 + 0.35 * len(names), 12.0)
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(M, vmin=0.0, vmax=1.0, cmap="magma", origin="lower")
    fig.colorbar(im, ax=ax, shrink=0.8, label="linear CKA")
    ticks = range(len(names)) if len(names) <= TICK_NAMES else range(0, len(names), max(1, len(names) // 12))
    ax.set_xticks(list(ticks), [names[i] for i in ticks], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(list(ticks), [names[i] for i in ticks], fontsize=8)
    ax.set_title("Linear CKA between layers")
    return fig
