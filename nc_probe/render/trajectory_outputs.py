"""The outputs of a trajectory: a terminal table, the tidy table and JSON, metric-against-epoch plots in the style
of Papyan, Han & Donoho (2020, figures 2-7: NC1-NC4 on log scales against epoch, train solid, test dashed) and an
HTML page."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from matplotlib.figure import Figure
from rich.table import Table

from nc_probe.analysis.trajectory import Trajectory
from nc_probe.core.files import atomic_write_text
from nc_probe.core.text import format_number as fmt

TABLE_KEYS = [("nc1", "nc1"), ("nc3", "nc3"), ("nc4", "nc4"), ("acc_model", "acc")]
TEST_KEYS = [("nc1_test", "nc1 test"), ("acc_ncc_test", "ncc test")]
PANELS = [("NC1: Tr(Sigma_W Sigma_B^+)/C", [("nc1", "nc1")]),
          ("NC2: means towards a simplex ETF", [("nc2_equinorm_M", "equinorm"), ("nc2_equiangle_M", "equiangle"),
                                                 ("nc2_maxangle_M", "maxangle")]),
          ("NC3: classifier towards the means", [("nc3", "nc3")]),
          ("NC4: classifier vs nearest class center", [("nc4", "nc4")])]
STYLES = {0: "-", 1: "--"}
SHORT = 3  # significant digits in the terminal table: a row per checkpoint stays inside 80 columns
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def caption(traj: Trajectory) -> str:
    """What the table's short columns are; the test columns only when a second split ran."""
    text = "acc: the model's accuracy (every metric: --out, --plots)"
    splits = traj.splits
    if len(splits) > 1:
        text += (f"; nc1 test, ncc test: the {splits[1]} rows against the {splits[0]} class means (nc1_test, "
                 "acc_ncc_test)")
    return text


def trajectory_warnings(traj: Trajectory) -> list[str]:
    """The run's notes, then every checkpoint's report warnings, each once and led by the checkpoints (and splits,
    with two) that gave it."""
    from nc_probe.reports.compare import group_warnings

    by_point = {(p.label if len(p.reports) == 1 else f"{p.label} ({split})"): list(r.warnings)
                for p in traj.points for split, r in p.reports.items()}
    return [str(n) for n in traj.notes] + group_warnings(by_point, every="every checkpoint")


def trajectory_table(traj: Trajectory) -> Table:
    splits = traj.splits
    table = Table(title=f"trajectory: {len(traj.points)} checkpoints ({', '.join(splits)})", caption=caption(traj))
    for head in ("epoch", "checkpoint", *[h for _, h in TABLE_KEYS]):
        if head == "checkpoint":  # labels are file names: folded onto more lines, never cut
            table.add_column(head, justify="left", overflow="fold")
        else:
            table.add_column(head, justify="right", no_wrap=True)
    test = len(splits) > 1
    if test:
        for _, head in TEST_KEYS:
            table.add_column(head, justify="right", no_wrap=True)
    for p in traj.points:
        m = p.reports[splits[0]].metrics
        cells = [fmt(p.epoch) if p.epoch is not None else "-", p.label, *[fmt(m.get(k), SHORT) for k, _ in TABLE_KEYS]]
        if test:
            mt = p.reports[splits[1]].metrics
            cells += [fmt(mt.get(k), SHORT) for k, _ in TEST_KEYS]
        table.add_row(*cells)
    return table


def _xs(traj: Trajectory) -> tuple[list[float], str, bool]:
    """x values (epochs, or positions when an epoch is unknown), their label, and whether to use a log axis."""
    if all(p.epoch is not None for p in traj.points):
        xs = [float(p.epoch) for p in traj.points]  # type: ignore[arg-type]
        log = min(xs) > 0 and max(xs) / min(xs) >= 50
        return xs, "epoch", log
    return [float(i + 1) for i in range(len(traj.points))], "checkpoint (order given)", False


def _line(ax, traj: Trajectory, xs: list[float], key: str, split: str, style: str, color: str, label: str,
          log: bool = False) -> bool:
    """One metric's curve; on a log axis exact zeros (nc4 once every decision agrees) are left out, not drawn at
    an arbitrary floor."""
    pts = [(x, v) for x, v in zip(xs, traj.values(key, split))
           if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not pts:
        return False
    ax.plot(*zip(*pts), style, marker="o", ms=3.5, color=color, label=label)
    return True


def trajectory_figures(traj: Trajectory) -> dict[str, Figure]:
    """``collapse`` (NC1-NC4 panels, log scale), ``accuracy`` and ``rates`` against epoch."""
    xs, xlabel, logx = _xs(traj)
    splits = traj.splits
    figs: dict[str, Figure] = {}
    fig = Figure(figsize=(10, 7), layout="constrained")
    axes = fig.subplots(2, 2)
    for ax, (title, keys) in zip(axes.flat, PANELS):
        for s_i, split in enumerate(splits):
            for k_i, (key, name) in enumerate(keys):
                tag = name if len(splits) == 1 else f"{name} ({split})"
                _line(ax, traj, xs, key, split, STYLES.get(s_i, ":"), COLORS[k_i % len(COLORS)], tag, log=True)
        ax.set_title(title + (" (zeros not drawn)" if title.startswith("NC4") else ""), fontsize=10)
        ax.set_yscale("log")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    figs["collapse"] = fig
    for name, title, keys in (
            ("accuracy", "Accuracy against epoch", [("acc_model", "model"), ("acc_ncc", "nearest class center")]),
            ("rates", "MCR^2 coding rates against epoch", [("coding_rate", "R"), ("coding_rate_within", "Rc"),
                                                          ("rate_reduction", "dR")])):
        fig = Figure(figsize=(7.2, 4.2), layout="constrained")
        ax = fig.add_subplot()
        drawn = False
        for s_i, split in enumerate(splits):
            for k_i, (key, label) in enumerate(keys):
                tag = label if len(splits) == 1 else f"{label} ({split})"
                drawn |= _line(ax, traj, xs, key, split, STYLES.get(s_i, ":"), COLORS[k_i % len(COLORS)], tag)
        if not drawn:
            continue
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        if logx:
            ax.set_xscale("log")
        if name == "accuracy":
            from nc_probe.render.plots import accuracy_axis

            accuracy_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        figs[name] = fig
    return figs


def trajectory_html(traj: Trajectory, figures: dict, spell=None) -> str:
    from nc_probe.core.errors import parameter_name
    from nc_probe.render.html import figures_html, html_page, html_table, warnings_html

    captions = {"collapse": "NC1-NC4 against epoch on log scales (Papyan, Han & Donoho 2020)"
                            + ("; the second split dashed." if len(traj.splits) > 1 else "."),
                "accuracy": "The model's and the nearest class center's accuracy against epoch.",
                "rates": "Coding rate R, within-class rate Rc and rate reduction dR against epoch."}
    splits = traj.splits
    heads = ["epoch", "checkpoint", *[h for _, h in TABLE_KEYS]] + ([h for _, h in TEST_KEYS] if len(splits) > 1
                                                                    else [])
    rows = []
    for p in traj.points:
        m = p.reports[splits[0]].metrics
        cells = [fmt(p.epoch) if p.epoch is not None else "-", p.label, *[fmt(m.get(k)) for k, _ in TABLE_KEYS]]
        if len(splits) > 1:
            cells += [fmt(p.reports[splits[1]].metrics.get(k)) for k, _ in TEST_KEYS]
        rows.append([f"<td>{escape(c)}</td>" for c in cells])
    parts = [f"<h1>nc-probe trajectory: {len(traj.points)} checkpoints</h1>",
             f'<p class="sub">splits: {escape(", ".join(splits))} &middot; eps^2 = '
             f'{escape(str(traj.settings_typed.metrics.eps2))}</p>',
             warnings_html(trajectory_warnings(traj), spell or parameter_name), "<h2 id=plots>Plots</h2>",
             figures_html(figures, captions), "<h2 id=table>Checkpoints</h2>", html_table(heads, rows),
             f'<p class="legend">{escape(caption(traj))}</p>']
    return html_page("nc-probe trajectory", "\n".join(p for p in parts if p))


def write_trajectory_outputs(traj: Trajectory, *, out=None, plots=None, html=None, spell=None) -> None:
    """``out``: trajectory.csv (checkpoint, epoch, split, metric, value) and trajectory.json; ``plots``: PNG and
    SVG; ``html``: one page."""
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "trajectory.csv", traj.tidy().to_csv(index=False))
        traj.save(folder / "trajectory.json")
    if plots is not None or html is not None:
        from nc_probe.render.plots import save_figures

        figures = trajectory_figures(traj)
        if plots is not None:
            save_figures(figures, plots)
        if html is not None:
            atomic_write_text(Path(html), trajectory_html(traj, figures, spell))
