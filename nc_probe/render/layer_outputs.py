"""The outputs of a layer report: a terminal table, the tidy table (CSV, Parquet, JSON), depth plots and an HTML
page (``nc-probe layers``)."""

from __future__ import annotations

import io
from html import escape
from pathlib import Path

from rich.table import Table

from ..errors import InputError, parameter_name
from ..files import atomic_write_text
from ..layer_report import LayerReport
from ..text import format_number as fmt

FORMATS = ("csv", "parquet", "json")
COLUMNS = [("D_l", "D_l"), ("acc_ncc", "NCC"), ("acc_linear_probe", "probe"), ("rank_energy95_mean", "r95"),
           ("rank_numerical_total", "rank"), ("rate_reduction", "dR")]


def check_layer_format(fmt_name: str | None, out) -> str | None:
    if fmt_name is None:
        return None
    name = str(fmt_name).lower()
    if name not in FORMATS:
        raise InputError(f"{{fmt}} {fmt_name!r} is not one of {', '.join(FORMATS)}", fix="use {fmt=csv}")
    if name == "parquet" and out is None:
        raise InputError("{fmt} parquet is binary and needs a folder", fix="add {out=DIR}")
    return name


def table_bytes(report: LayerReport, fmt_name: str) -> bytes:
    df = report.tidy()
    if fmt_name == "csv":
        return df.to_csv(index=False).encode()
    if fmt_name == "json":
        return (df.to_json(orient="records", indent=1) + "\n").encode()
    buf = io.BytesIO()
    try:
        df.to_parquet(buf, index=False)
    except ImportError:
        raise InputError("{fmt} parquet needs pyarrow", fix="pip install pyarrow, or use {fmt=csv}") from None
    return buf.getvalue()


def write_layer_outputs(report: LayerReport, *, out=None, fmt: str | None = None, plots=None, html=None) -> str | None:
    """Write what was asked; returns the tidy table as text when ``fmt`` is a text format and there is no ``out``."""
    fmt_name = check_layer_format(fmt, out)
    text = None
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        report.save(folder / "layers.json")
        name = fmt_name or "csv"
        atomic_write_text(folder / f"layers.{name}", table_bytes(report, name))
    elif fmt_name is not None:
        text = table_bytes(report, fmt_name).decode()
    if plots is not None or html is not None:
        from .depth_plots import depth_figures
        from .plots import save_figures

        figures = depth_figures({_label(report): report})
        if plots is not None:
            save_figures(figures, plots)
        if html is not None:
            atomic_write_text(Path(html), layers_html({_label(report): report}, figures))
    return text


def _label(report: LayerReport) -> str:
    return str(report.inputs.get("label") or Path(str(report.inputs.get("source", "model"))).stem)


def render_layers(report: LayerReport, console, spell=parameter_name) -> None:
    """The layer table, the depth law and the warnings, on a rich console."""
    console.print(layers_table(report))
    for line in law_lines(report):
        console.print(line)
    from ..errors import spell as spell_text

    for w in report.warnings + layer_warnings(report):
        console.print(f"[yellow]warning:[/] {spell_text(str(w), spell)}", highlight=False)


def layer_warnings(report: LayerReport) -> list[str]:
    """Each layer's warnings once, with the layers that gave them (the same small-class warning for every layer
    would otherwise repeat L times)."""
    where: dict[str, list[str]] = {}
    for layer in report.layers:
        for w in layer["warnings"]:
            where.setdefault(str(w), []).append(layer["name"])
    return [f"{', '.join(names) if len(names) < len(report.layers) or len(names) == 1 else 'every layer'}: {w}"
            for w, names in where.items()]


def layers_table(report: LayerReport) -> Table:
    src = report.inputs.get("source", "")
    table = Table(title=f"{Path(str(src)).name}: {len(report.layers)} layers "
                        f"(N={report.inputs.get('num_samples')}, C={report.inputs.get('num_classes')})",
                  caption="D_l = Tr(Sigma_W Sigma_B^+); NCC, probe: accuracies; r95: mean per-class rank_energy95; "
                          "rank: numerical rank of the layer; dR: rate reduction")
    table.add_column("l", justify="right")
    table.add_column("layer")
    table.add_column("d", justify="right")
    for _, head in COLUMNS:
        table.add_column(head, justify="right")
    for layer in report.layers:
        reduced = str(layer["dim"]) + (f" {layer['pool']}" if layer.get("pool") not in (None, "none") else "")
        if layer.get("projection_seed") is not None:
            reduced += f" (of {layer['raw_dim']})"
        table.add_row(str(layer["depth"]), layer["name"], reduced,
                      *[fmt(layer["metrics"].get(key)) for key, _ in COLUMNS])
    return table


def law_lines(report: LayerReport) -> list[str]:
    law = report.laws.get("D_l") or {}
    lines = []
    if law.get("rho") is not None:
        r2 = law.get("r2")
        lines.append(f"depth law ln D_l = a - rho * l over {law['layers']} layers: rho = {fmt(law['rho'])}, "
                     f"a = {fmt(law['a'])}, R^2 = {fmt(r2) if r2 is not None else '-'}")
    for key, name in (("acc_ncc", "NCC accuracy"), ("acc_linear_probe", "linear-probe accuracy")):
        p = report.laws.get(f"plateau_{key}")
        if p:
            lines.append(f"{name} gains no more than 1 point after layer {p['depth']} ({p['name']})")
    return lines


def layers_html(reports: dict[str, LayerReport], figures: dict) -> str:
    """A self-contained page: the depth plots, each model's layer table and depth law."""
    from .html import _figures_html, _page, _table

    captions = {"fuzziness": "Separation fuzziness D_l (log scale) per layer with the fitted law ln D_l = a - rho l "
                             "(He & Su 2023): a straight line means geometric decay with depth.",
                "rates": "MCR^2 coding rate R of all features, within-class rate Rc and rate reduction dR per layer.",
                "ranks": "Mean per-class rank_energy95 and the numerical rank of each layer's features.",
                "accuracy": "Nearest-class-center and linear-probe accuracy per layer; a vertical line marks the "
                            "layer after which the accuracy gains at most one point (the tunnel's start).",
                "collapse": "nc1, nc1_cdnv and the ETF distance of the class means per layer (log scale).",
                "cka": "Linear CKA between every pair of layers (Kornblith et al. 2019): blocks of high similarity "
                       "are layers that change the representation little."}
    parts = [f"<h1>nc-probe layers: {escape(', '.join(reports))}</h1>", _figures_html(figures, captions)]
    for label, report in reports.items():
        rows = [[f"<td>{layer['depth']}</td>", f"<td><code>{escape(layer['name'])}</code></td>",
                 f"<td>{escape(str(layer.get('dim')))} ({escape(str(layer.get('pool')))})</td>",
                 *[f'<td class="num">{escape(fmt(layer["metrics"].get(k)))}</td>' for k, _ in COLUMNS]]
                for layer in report.layers]
        parts.append(f"<h2>{escape(label)}</h2>")
        parts.append(_table(["l", "layer", "d (pool)"] + [h for _, h in COLUMNS], rows))
        parts += [f"<p>{escape(line)}</p>" for line in law_lines(report)]
        parts += [f'<div class="warn">{escape(str(w))}</div>' for w in report.warnings]
    return _page("nc-probe layers", "\n".join(parts))


# ------------------------------------------------------------------------------------------ layer comparisons
def render_layer_comparison(comparison, console) -> None:
    """Each model's depth law and plateaus, then D_l and the probe accuracy by depth, one column per model."""
    laws = Table(title="depth laws: ln D_l = a - rho * l", caption="plateau: the layer after which the accuracy "
                                                                    "gains at most one point")
    for head in ("model", "layers", "rho", "a", "R^2", "NCC plateau", "probe plateau"):
        laws.add_column(head, justify="left" if head in ("model", "NCC plateau", "probe plateau") else "right")
    for row in comparison.laws().to_dict(orient="records"):
        laws.add_row(row["model"], str(row["layers"]), fmt(row["rho"]), fmt(row["a"]), fmt(row["r2"]),
                     row["plateau_acc_ncc"] or "-", row["plateau_acc_linear_probe"] or "-")
    console.print(laws)
    reports = comparison.reports
    depth = max(len(r.layers) for r in reports.values())
    table = Table(title="by depth: D_l / linear-probe accuracy")
    table.add_column("l", justify="right")
    for label in reports:
        table.add_column(label, justify="right")
    for i in range(depth):
        cells = []
        for r in reports.values():
            if i < len(r.layers):
                m = r.layers[i]["metrics"]
                cells.append(f"{fmt(m.get('D_l'))} / {fmt(m.get('acc_linear_probe'))}")
            else:
                cells.append("")
        table.add_row(str(i + 1), *cells)
    console.print(table)


def write_layer_comparison(comparison, *, plots=None, html=None) -> None:
    """Depth curves of every model on shared axes (PNG and SVG into ``plots``), and the HTML page."""
    if plots is None and html is None:
        return
    from .depth_plots import depth_figures
    from .plots import save_figures

    figures = depth_figures(comparison.reports)
    if plots is not None:
        save_figures(figures, plots)
    if html is not None:
        atomic_write_text(Path(html), layers_html(comparison.reports, figures))
