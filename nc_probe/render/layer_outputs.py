"""The outputs of a layer report: a terminal table, the tidy table (CSV, Parquet, JSON), depth plots and an HTML
page (``nc-probe layers``)."""

from __future__ import annotations

import io
from html import escape
from pathlib import Path

from rich.table import Table

from nc_probe.core.errors import InputError, parameter_name
from nc_probe.core.files import atomic_write_text
from nc_probe.core.text import format_number as fmt
from nc_probe.reports.layer_report import LayerReport

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


def write_layer_outputs(report: LayerReport, *, out=None, fmt: str | None = None, plots=None, html=None,
                        spell=parameter_name) -> str | None:
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
        from nc_probe.render.depth_plots import depth_figures
        from nc_probe.render.plots import save_figures

        figures = depth_figures({_label(report): report})
        if plots is not None:
            save_figures(figures, plots)
        if html is not None:
            atomic_write_text(Path(html), layers_html({_label(report): report}, figures, spell))
    return text


def _label(report: LayerReport) -> str:
    return str(report.inputs.get("label") or Path(str(report.inputs.get("source", "model"))).stem)


def render_layers(report: LayerReport, console, spell=parameter_name, warn=None) -> None:
    """The layer table, the depth law and the warnings (the report's, then each layer's once, naming its layers),
    on a rich console; ``warn``: where the warnings go instead (the CLI's stderr)."""
    from rich.text import Text

    from nc_probe.core.errors import spell as spell_text

    console.print(layers_table(report))
    for line in law_lines(report):
        console.print(Text(line))
    for w in all_layer_warnings(report):
        if warn is not None:
            warn(w)
        else:
            console.print(Text(f"warning: {spell_text(w, spell)}", style="yellow"))


def all_layer_warnings(report: LayerReport) -> list[str]:
    """The report's own warnings, then each layer's once (:meth:`LayerReport.all_warnings`)."""
    return report.all_warnings()


def layer_warnings(report: LayerReport) -> list[str]:
    """Each layer's warnings once, with the layers that gave them (:meth:`LayerReport.layer_warnings`)."""
    return report.layer_warnings()


def layers_table(report: LayerReport) -> Table:
    src = report.inputs.get("source", "")
    table = Table(title=f"{Path(str(src)).name}: {len(report.layers)} layers "
                        f"(N={report.inputs.get('num_samples')}, C={report.inputs.get('num_classes')})",
                  caption="D_l = Tr(Sigma_W Sigma_B^+); NCC, probe: accuracies; r95: mean per-class rank_energy95; "
                          "rank: numerical rank of the layer; dR: rate reduction")
    table.add_column("l", justify="right", no_wrap=True)
    table.add_column("layer", overflow="fold")  # the names --layers takes: folded onto more lines, never cut
    table.add_column("d", justify="right", overflow="fold")
    for _, head in COLUMNS:  # numbers keep their width; the name column gives way
        table.add_column(head, justify="right", no_wrap=True)
    for layer in report.layers:
        table.add_row(str(layer["depth"]), layer["name"], _reduced(layer),
                      *[fmt(layer["metrics"].get(key)) for key, _ in COLUMNS])
    return table


ACCURACIES = (("acc_ncc", "NCC accuracy"), ("acc_linear_probe", "linear-probe accuracy"))


def law_lines(report: LayerReport) -> list[str]:
    """The depth law (with a caveat when it fits poorly) and how each accuracy runs through depth."""
    lines = []
    law = law_line(report)
    if law:
        lines.append(law)
    for key, name in ACCURACIES:
        line = accuracy_line(report, key, name)
        if line:
            lines.append(line)
    return lines


def law_line(report: LayerReport) -> str | None:
    """'depth law ... rho = 0.372 per layer, ...'; below R^2 = LAW_FIT_R2 it says the law does not fit and why rho is
    then no rate."""
    from nc_probe.reports.layer_report import LAW_FIT_R2

    law = report.laws.get("D_l") or {}
    if law.get("rho") is None:
        return None
    r2 = law.get("r2")
    text = (f"depth law ln D_l = a - rho * l over {law['layers']} layers: rho = {fmt(law['rho'])}, "
            f"a = {fmt(law['a'])}, R^2 = {fmt(r2) if r2 is not None else '-'}")
    if r2 is None:
        return text + " (D_l is the same at every layer: there is no decay to fit)"
    if report.law_fits() is False:
        return text + (f". The law does not fit well (R^2 < {LAW_FIT_R2:g}): ln D_l is far from a straight line in "
                       "depth, so rho is the slope of a poor fit, not a rate at which D_l falls per layer")
    if law["rho"] <= 0:
        return text + " (rho <= 0: D_l does not fall with depth)"
    return text


def accuracy_line(report: LayerReport, key: str, name: str) -> str | None:
    """A true sentence about the accuracy through depth: where it peaks and that it falls after that, that it stays
    within one point after some layer, or that it still rises at the last layer."""
    course = report.accuracy_course(key)
    if course is None:
        return None
    peak, last, first = course["peak"], course["last"], course["first"]

    def at(p) -> str:
        return f"{fmt(p['value'])} at layer {p['depth']} ({p['name']})"

    shape = course["shape"]
    if shape == "single":
        return f"{name}: {at(last)}"
    if shape == "falls":
        low = course["lowest_after_peak"]
        text = f"{name} peaks at {at(peak)} and falls after it, to {at(last)}"
        return text + (f"; lowest {at(low)}" if low is not last and low["value"] < last["value"] else "")
    if shape == "rises":
        return f"{name} still gains more than 1 point at the last layers: {at(first)}, {at(last)} (no plateau)"
    p = course["plateau"]
    return (f"{name} gains no more than 1 point after layer {p['depth']} ({p['name']}): {fmt(p['value'])} there, "
            f"{fmt(peak['value'])} at best, {fmt(last['value'])} at the last layer")


COLUMN_LEGEND = ("D_l = Tr(Sigma_W Sigma_B^+), the separation fuzziness (He & Su 2023; lower = classes more "
                 "separated); NCC, probe: nearest-class-center and ridge linear-probe accuracy on the layer's "
                 "features; r95: mean per-class rank_energy95; rank: numerical rank of the layer's features; dR: "
                 "MCR^2 rate reduction (nats); d: the analysed dimension (pooling, and the width before a random "
                 "projection)")
SETTING_KEYS = ("eps2", "rank_tol", "subspace_dim", "min_class_count", "device", "batch_size", "amp")


def _reduced(layer: dict) -> str:
    text = str(layer.get("dim")) + (f" {layer['pool']}" if layer.get("pool") not in (None, "none") else "")
    if layer.get("projection_seed") is not None:
        text += f" (of {layer.get('raw_dim')})"
    return text


def _about_html(report: LayerReport) -> str:
    """What was analysed and how: source, data, N, C, the layer selection, pooling and the settings."""
    from nc_probe.render.html import html_cards, kv_table

    i, st = report.inputs, report.settings
    cards = html_cards([("samples N", str(i.get("num_samples"))), ("classes C", str(i.get("num_classes"))),
                    ("layers", str(len(report.layers)))])
    about = {"source": i.get("source"), "sha256": i.get("sha256"), "arch": i.get("arch"), "data": i.get("data"),
             "split": i.get("split"), "layers (selection)": i.get("layers"), "classifier": i.get("head"),
             "pool": i.get("pool"), "max_dim": i.get("max_dim")}
    settings = {k: st.get(k) for k in SETTING_KEYS if k in st}
    return (cards + "<h3>Inputs</h3>" + kv_table({k: v for k, v in about.items() if v is not None})
            + "<h3>Settings</h3>" + kv_table(settings))


def layers_html(reports: dict[str, LayerReport], figures: dict, spell=parameter_name) -> str:
    """A self-contained page: the depth plots, and for each model what was analysed (N, C, data, selection,
    settings), its layer table with a legend of the columns, the depth law and accuracies, and its warnings (the
    report's, then each layer's once with the layers that gave it)."""
    from nc_probe.render.html import figures_html, html_page, html_table, warnings_html

    captions = {"fuzziness": "Separation fuzziness D_l (log scale) per layer with the fitted law ln D_l = a - rho l "
                             "(He & Su 2023): a straight line means geometric decay with depth; the law's R^2 says "
                             "how straight.",
                "rates": "MCR^2 coding rate R of all features, within-class rate Rc and rate reduction dR per layer.",
                "ranks": "Mean per-class rank_energy95 and the numerical rank of each layer's features.",
                "accuracy": "Nearest-class-center and linear-probe accuracy per layer; a vertical line marks the "
                            "layer after which the accuracy gains at most one point (it may fall after it: the "
                            "sentences under each model's table say so).",
                "collapse": "nc1, nc1_cdnv and the ETF distance of the class means per layer (log scale).",
                "cka": "Linear CKA between every pair of layers (Kornblith et al. 2019): blocks of high similarity "
                       "are layers that change the representation little."}
    several = len(reports) > 1
    warnings = {label: r.all_warnings() for label, r in reports.items()}
    if several:
        from nc_probe.reports.compare import group_warnings

        top = warnings_html(group_warnings(warnings), spell)
    else:
        top = warnings_html(next(iter(warnings.values())), spell)
    parts = [f"<h1>nc-probe layers: {escape(', '.join(reports))}</h1>",
             '<p class="sub">Every selected layer of the model analysed with the single-layer metrics '
             "(docs/metrics.md, \"Layers\").</p>", top, "<h2 id=plots>Plots</h2>",
             figures_html(figures, captions)]
    for label, report in reports.items():
        rows = [[f"<td>{layer['depth']}</td>", f"<td><code>{escape(layer['name'])}</code></td>",
                 f"<td>{escape(_reduced(layer))}</td>",
                 *[f'<td class="num">{escape(fmt(layer["metrics"].get(k)))}</td>' for k, _ in COLUMNS]]
                for layer in report.layers]
        parts.append(f"<h2>{escape(label)}</h2>")
        parts.append(_about_html(report))
        parts.append("<h3>Layers</h3>")
        parts.append(html_table(["l", "layer", "d"] + [h for _, h in COLUMNS], rows))
        parts.append(f'<p class="legend">{escape(COLUMN_LEGEND)}</p>')
        parts += [f"<p>{escape(line)}</p>" for line in law_lines(report)]
    return html_page("nc-probe layers", "\n".join(p for p in parts if p))


# ------------------------------------------------------------------------------------------ layer comparisons
def render_layer_comparison(comparison, console, spell=parameter_name, warn=None) -> None:
    """Each model's depth law and plateaus, then D_l and the probe accuracy by depth, one column per model, then
    every model's warnings (labelled); ``warn``: where the warnings go instead (the CLI's stderr)."""
    from rich.text import Text

    from nc_probe.core.errors import spell as spell_text
    from nc_probe.reports.layer_report import LAW_FIT_R2

    laws = Table(title="depth laws: ln D_l = a - rho * l",
                 caption="plateau: the layer after which the accuracy gains at most one point, or its peak when it "
                         f"falls after it; R^2 *: below {LAW_FIT_R2:g}, the law does not fit and rho is no rate")
    for head in ("model", "layers", "rho", "a", "R^2", "NCC plateau", "probe plateau"):
        left = head in ("model", "NCC plateau", "probe plateau")
        laws.add_column(head, justify="left" if left else "right", overflow="fold")
    for row in comparison.laws().to_dict(orient="records"):
        r2 = fmt(row["r2"]) + (" *" if row.get("law_fits") is False else "")
        laws.add_row(row["model"], str(row["layers"]), fmt(row["rho"]), fmt(row["a"]), r2,
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
    for w in comparison.warnings():
        if warn is not None:
            warn(w)
        else:
            console.print(Text(f"warning: {spell_text(w, spell)}", style="yellow"))


def write_layer_comparison(comparison, *, plots=None, html=None, spell=parameter_name) -> None:
    """Depth curves of every model on shared axes (PNG and SVG into ``plots``), and the HTML page."""
    if plots is None and html is None:
        return
    from nc_probe.render.depth_plots import depth_figures
    from nc_probe.render.plots import save_figures

    figures = depth_figures(comparison.reports)
    if plots is not None:
        save_figures(figures, plots)
    if html is not None:
        atomic_write_text(Path(html), layers_html(comparison.reports, figures, spell))
