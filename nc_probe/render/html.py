"""A self-contained HTML page of a Report (or of a Comparison): summary, tables, plots, settings and inputs.

Everything is in the one file: CSS inline, plots as base64 PNG data URIs, no script. A Content-Security-Policy
meta tag forbids every network fetch, so opening the page never touches the network.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from nc_probe.core.errors import parameter_name
from nc_probe.core.errors import spell as spell_text
from nc_probe.core.files import atomic_write_text
from nc_probe.core.text import format_number as fmt
from nc_probe.core.text import plain_number
from nc_probe.metrics import METRIC_DOCS
from nc_probe.render.terminal import expected
from nc_probe.reports.report import Report

MAX_TABLE_ROWS = 200  # above this many classes, the per-class table is a summary and the lowest/highest rows
EDGE_ROWS = 25  # the lowest and the highest rows shown of a cut per-class table
MAX_PAIR_ROWS = 50

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1d2330; background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; box-sizing: border-box; }
h1 { font-size: 24px; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 18px; margin: 32px 0 10px; border-bottom: 1px solid #d5d9e0; padding-bottom: 4px; }
.sub { color: #5b6372; margin: 0 0 16px; overflow-wrap: anywhere; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
.sub code, td.wrap, td.wrap code { overflow-wrap: anywhere; }  /* paths and hashes break; metric names do not */
td.wrap { min-width: 6em; }
table { border-collapse: collapse; background: #fff; box-shadow: 0 1px 2px rgba(0,0,0,.06); margin: 6px 0 10px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e6e8ec; text-align: left; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.meaning { color: #5b6372; min-width: 12em; max-width: 40em; } td.exp { white-space: nowrap; color: #3a4252; }
tr:hover td { background: #f8f9fb; }
.more { color: #1f5fbf; font-weight: 600; } .less { color: #b35900; font-weight: 600; } .same { color: #6b7280; }
.legend { color: #3a4252; font-size: 13px; margin: 4px 0 8px; }
.warn { background: #fff6dd; border-left: 4px solid #e0a800; padding: 6px 10px; margin: 4px 0;
        overflow-wrap: anywhere; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 10px 0 4px; }
.card { background: #fff; padding: 8px 14px; border-radius: 6px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.card b { display: block; font-size: 20px; } .card span { color: #5b6372; font-size: 12px; }
figure { background: #fff; margin: 0 14px 18px 0; padding: 10px; vertical-align: top; border-radius: 6px;
         box-shadow: 0 1px 2px rgba(0,0,0,.08); display: inline-block; max-width: 100%; box-sizing: border-box; }
figure.half { max-width: calc(50% - 18px); } figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #5b6372; font-size: 13px; width: 0; min-width: 100%; }  /* never wider than its plot */
img { max-width: 100%; height: auto; }
.wide-scroll { overflow-x: auto; max-width: 100%; }
.pairs { display: flex; flex-wrap: wrap; gap: 0 18px; max-width: 100%; } .pairs > div { max-width: 100%; }
.pairs h3 { font-size: 14px; margin: 10px 0 2px; }
tr.gap td { text-align: center; color: #5b6372; font-style: italic; }
.scroll { max-height: 520px; overflow: auto; display: inline-block; max-width: 100%; }
details { max-width: 100%; } summary { cursor: pointer; margin: 6px 0; }
pre { background: #fff; padding: 8px; overflow: auto; max-height: 300px; }
footer { color: #8a91a0; font-size: 12px; margin-top: 40px; }
@media (max-width: 760px) {
  main { padding: 12px 10px 32px; }
  figure, figure.half { max-width: 100%; margin-right: 0; }
  th, td { padding: 3px 6px; }
}
"""

CAPTIONS = {
    "metrics": "NC metric overview: collapse metrics on a log scale (0 = collapsed), MCR^2 coding rates against the "
               "rate of isotropic features, and the smallest principal angles against the ETF and orthogonal "
               "references.",
    "spectra": "Normalized eigenvalue spectra (lambda_j / sum lambda, log scale) of each class's unit features: a "
               "collapsed class puts nearly all energy in one direction.",
    "angle_min": "Smallest principal angle between class subspaces (degrees): 90 = orthogonal (MCR^2-like), "
                 "arccos(1/(C-1)) for the 1-D subspaces of a collapsed simplex ETF.",
    "mean_cosine": "Cosines of the centered class means beside the simplex ETF target (-1/(C-1) off the diagonal).",
    "coding_rate": "MCR^2 coding rate R_c of each class, with the within-class rate Rc and the total rate R.",
    "pca2d": "2-D PCA of a deterministic subsample of the features, coloured by class (axes: top-2 principal "
             "components of all features).",
    "cka": "Linear CKA (Kornblith et al. 2019) between inputs that hold features of the same samples.",
    # many classes: distributions over class pairs instead of heatmaps, sorted values instead of bars
    "angle_min:distribution": "Smallest principal angle between class subspaces (degrees) over all class pairs "
                              "(histogram of the matrix, or the quantiles of the report's summary when the matrix was "
                              "not kept), and the closest pairs by name.",
    "mean_cosine:distribution": "Cosines of the centered class means over all class pairs, against the simplex ETF "
                                "value -1/(C-1), and the most aligned pairs by name.",
    "subspace_affinity:distribution": "Subspace affinity over all class pairs, and the most overlapping pairs by "
                                      "name.",
    "cdnv:distribution": "Class-distance normalized variance over all class pairs (small = well separated), and the "
                         "least separated pairs by name.",
    "spectra:bands": "Normalized eigenvalue spectra (log scale) over classes: the median class, the middle half and "
                     "the full range; a collapsed class puts nearly all energy in one direction.",
    "coding_rate:sorted": "MCR^2 coding rate R_c of each class, sorted from the highest, with the within-class rate Rc "
                          "and the total rate R.",
}
COMPARE_CAPTIONS = {
    **CAPTIONS,
    "metrics": "NC metrics side by side, one colour per input: collapse metrics on a log scale (0 = collapsed), "
               "MCR^2 coding rates, and the smallest principal angles against the orthogonal and ETF references.",
    "spectra": "Per-class normalized eigenvalue spectra (log scale): per input, the mean over classes (line) and the "
               "range over classes (band).",
    "angle_min": "Smallest principal angle between class subspaces (degrees) of each input, on one colour scale.",
    "mean_cosine": "Cosines of the centered class means of each input, and the simplex ETF target (-1/(C-1) off "
                   "the diagonal) last.",
    "coding_rate": "MCR^2 coding rate R_c of each class, one colour per input.",
    "angle_min:distribution": "Smallest principal angle between class subspaces (degrees): the fraction of class "
                              "pairs at or below each angle, one curve per input.",
    "mean_cosine:distribution": "Cosines of the centered class means: the fraction of class pairs at or below each "
                                "value, one curve per input.",
    "coding_rate:sorted": "MCR^2 coding rate R_c of each class, sorted from the highest, one line per input.",
}


def _num_cell(v) -> str:
    return f'<td class="num">{escape(fmt(v))}</td>'


def html_table(header: list[str], rows: list[list[str]], cls: str = "", scroll: bool = True) -> str:
    """A table; in a horizontally scrolling box unless ``scroll`` is False (the caller wraps it), so a wide table
    never widens the page."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    table = f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'
    return f'<div class="wide-scroll">{table}</div>' if scroll else table


def kv_table(d: dict) -> str:
    rows = []
    for k, v in d.items():
        text = json.dumps(v, default=str) if isinstance(v, (dict, list)) else ("-" if v is None else str(v))
        if len(text) > 400:
            text = text[:400] + " ..."
        rows.append([f"<td><code>{escape(str(k))}</code></td>", f'<td class="wrap"><code>{escape(text)}</code></td>'])
    return html_table(["key", "value"], rows)


def figures_html(figures: dict, captions: dict = CAPTIONS) -> str:
    from nc_probe.render.plots import figure_data_uri

    parts = []
    for name, fig in figures.items():
        wide = fig.get_figwidth() > 7.5
        sup = getattr(fig, "_suptitle", None)
        title = sup.get_text() if sup is not None else fig.axes[0].get_title().replace("\n", " ")
        view = getattr(fig, "nc_probe_view", None)
        caption = captions.get(f"{name}:{view}") or captions.get(name, title)
        parts.append(f'<figure id="plot-{escape(name)}" class="{"wide" if wide else "half"}">'
                     f'<img src="{figure_data_uri(fig)}" alt="{escape(title)}">'
                     f"<figcaption>{escape(caption)}</figcaption></figure>")
    return "\n".join(parts)


def html_page(title: str, body: str) -> str:
    from nc_probe._version import __version__

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="nc-probe {escape(__version__)}">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body><main>
{body}
<footer>nc-probe {escape(__version__)}. Metric definitions: docs/metrics.md of nc-probe. This page is self-contained and
makes no network requests.</footer>
</main></body>
</html>
"""


def summary_rows(report: Report) -> list[list[str]]:
    C = report.inputs.get("num_classes")
    return [[f'<td><code>{escape(k)}</code></td>', _num_cell(v), f'<td class="exp">{escape(expected(k, C))}</td>',
             f'<td class="meaning">{escape(METRIC_DOCS.get(k, ""))}</td>'] for k, v in report.metrics.items()]


PER_CLASS_COLUMNS = ("class_id", "class_name", "n", "acc_model", "acc_ncc", "rank_energy95", "rank_energy99",
                     "rank_effective", "rank_numerical", "coding_rate_class", "within_class_variance", "mean_norm")


def _rows_html(df, cols: list[str]) -> list[list[str]]:
    return [[f"<td>{escape(str(rec[c]))}</td>" if c == "class_name" else _num_cell(plain_number(rec[c]))
             for c in cols] for rec in df[cols].to_dict(orient="records")]


def _per_class_html(report: Report) -> str:
    """Every class, up to MAX_TABLE_ROWS; above that a summary of each column and the EDGE_ROWS lowest and highest
    classes (by accuracy), so the page stays small whatever C is."""
    from nc_probe.render.tables import per_class_frame

    df = per_class_frame(report)
    cols = [c for c in PER_CLASS_COLUMNS if c in df.columns and df[c].notna().any()]
    if len(df) <= MAX_TABLE_ROWS:
        return f'<div class="scroll">{html_table(cols, _rows_html(df, cols), scroll=False)}</div>'
    key = next((c for c in ("acc_model", "acc_ncc", "n") if c in cols), "n")
    ranked = df.sort_values(key, kind="stable", na_position="first")
    left = len(df) - 2 * EDGE_ROWS
    rows = _rows_html(ranked.head(EDGE_ROWS), cols)
    rows.append([f'<td colspan="{len(cols)}">... {left:,} classes left out ...</td>'])
    rows += _rows_html(ranked.tail(EDGE_ROWS), cols)
    body = "\n".join(("<tr class=gap>" if len(r) == 1 else "<tr>") + "".join(r) + "</tr>" for r in rows)
    head = "".join(f"<th>{escape(h)}</th>" for h in cols)
    return (f"<p class=sub>{len(df):,} classes: each column over all of them, then the {EDGE_ROWS} lowest and the "
            f"{EDGE_ROWS} highest by <code>{key}</code>. {left:,} classes are left out here; the per-class CSV and "
            f"the report JSON hold every class.</p>{_column_summary(df, cols)}"
            f'<div class="wide-scroll"><table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table></div>')


def _column_summary(df, cols: list[str]) -> str:
    stats = ["classes", "mean", "min", "5%", "median", "95%", "max"]
    rows = []
    for c in cols:
        if c in ("class_id", "class_name"):
            continue
        v = df[c].astype(float).dropna()
        q = v.quantile([0.05, 0.5, 0.95]).tolist() if len(v) else [None] * 3
        vals = [len(v), v.mean() if len(v) else None, v.min() if len(v) else None, *q, v.max() if len(v) else None]
        rows.append([f"<td><code>{escape(c)}</code></td>"] + [_num_cell(plain_number(x)) for x in vals])
    return html_table(["column"] + stats, rows)


def _pairs_html(report: Report) -> str:
    """Each class-pair quantity: its statistics over all pairs and its most extreme pairs by name; for few classes,
    also the closest class subspaces with both of their measures."""
    parts = []
    pairs = {k: s for k, s in (report.pairs or {}).items() if isinstance(s, dict) and s.get("count")}
    if pairs:
        parts.append("<p class=sub>Statistics over every class pair (c &lt; c'); quantiles found as the "
                     "<i>method</i> column says.</p>" + _pair_stats_html(pairs))
        tops = []
        for key, s in pairs.items():
            rows = [[_num_cell(r), f"<td>{escape(str(t.get('a_name')))}</td>",
                     f"<td>{escape(str(t.get('b_name')))}</td>", _num_cell(t.get("value"))]
                    for r, t in enumerate(s.get("top") or [], 1)]
            tops.append(f"<div><h3>{escape(key)}: the {len(rows)} {escape(str(s.get('top_kind')))}</h3>"
                        + html_table(["#", "class a", "class b", key], rows) + "</div>")
        parts.append('<div class="pairs">' + "".join(tops) + "</div>")
    parts.append(_closest_subspaces_html(report))
    return "\n".join(p for p in parts if p) or ("<p class=sub>No class-pair quantities in this report.</p>")


def _pair_stats_html(pairs: dict) -> str:
    levels = sorted({q for s in pairs.values() for q in (s.get("quantiles") or {})}, key=float)
    rows = []
    for key, s in pairs.items():
        q = s.get("quantiles") or {}
        rows.append([f"<td><code>{escape(key)}</code></td>", _num_cell(s.get("count"))]
                    + [_num_cell(s.get(k)) for k in ("mean", "std", "min")] + [_num_cell(q.get(lv)) for lv in levels]
                    + [_num_cell(s.get("max")), f"<td>{escape(str(s.get('quantile_method') or '-'))}</td>"])
    header = ["quantity", "pairs", "mean", "std", "min"] + [f"{100 * float(lv):g}%" for lv in levels] + ["max",
                                                                                                        "method"]
    return html_table(header, rows)


def _closest_subspaces_html(report: Report) -> str:
    from nc_probe.render.pair_data import HEATMAP_LIMIT, pair_view
    from nc_probe.render.tables import angles_frame

    if pair_view(report, "angle_min") != "heatmap" or len(report.angles["class_ids"]) > HEATMAP_LIMIT:
        return ""
    df = angles_frame(report).sort_values("angle_min").head(MAX_PAIR_ROWS)
    names = dict(zip(report.inputs.get("class_ids") or [], report.inputs.get("class_names") or []))
    rows = [[f"<td>{escape(str(names.get(a, a)))}</td>", f"<td>{escape(str(names.get(b, b)))}</td>", _num_cell(ang),
             _num_cell(aff)] for a, b, ang, aff in df.itertuples(index=False)]
    return (f"<p class=sub>The {len(df)} closest class subspaces (smallest angle first).</p>"
            + html_table(["class a", "class b", "angle_min (deg)", "subspace_affinity"], rows))


DELTA_CLASS = {"more": "more", "less": "less", "none": "same"}
DELTA_LEGEND = ('<p class="legend">Colours say the direction of a change, not whether it is better: '
                '<span class="more">more collapsed / separated / compressed / ...</span> (the metric\'s word), '
                '<span class="less">less</span>, <span class="same">no change</span> (within the metric\'s '
                "resolution: float rounding, docs/metrics.md).</p>")


def html_cards(items: list[tuple[str, str]]) -> str:
    return '<div class="cards">' + "".join(f"<div class=card><b>{escape(v)}</b><span>{escape(k)}</span></div>"
                                           for k, v in items) + "</div>"


def warnings_html(warnings: list, spell=parameter_name) -> str:
    if not warnings:
        return ""
    return "<h2 id=warnings>Warnings</h2>" + "".join(f'<div class="warn">{escape(spell_text(str(w), spell))}</div>'
                                                     for w in warnings)


def report_html(report: Report, figures: dict | None = None, spell=parameter_name) -> str:
    """The page of one report; ``figures`` defaults to :func:`nc_probe.render.plots.report_figures`."""
    if figures is None:
        from nc_probe.render.plots import report_figures

        figures = report_figures(report)
    i, m, eps2 = report.inputs, report.metrics, report.settings_typed.metrics.eps2
    source = str(i.get("source"))
    cards = html_cards([("samples N", str(i.get("num_samples"))), ("classes C", str(i.get("num_classes"))),
                    ("dimension d", str(i.get("dim"))), ("nc1", fmt(m.get("nc1"))),
                    ("rate_reduction (nats)", fmt(m.get("rate_reduction"))),
                    ("angle_min_mean (deg)", fmt(m.get("angle_min_mean"))), ("acc_ncc", fmt(m.get("acc_ncc")))])
    body = f"""<h1>nc-probe report</h1>
<p class="sub"><code>{escape(source)}</code> &middot; sha256 <code>{escape(str(i.get('sha256') or '-'))}</code>
&middot; layer {escape(str(i.get('layer') or '-'))} &middot; eps^2 = {escape(str(eps2))}</p>
{cards}
{warnings_html(report.warnings, spell)}
<h2 id="summary">Metrics</h2>
<p class="sub">"collapsed / MCR^2": what a collapsed (cross-entropy, terminal phase) and an MCR^2-like model show.</p>
{html_table(["metric", "value", "collapsed / MCR^2", "meaning"], summary_rows(report))}
<h2 id="plots">Plots</h2>
{figures_html(figures)}
<h2 id="per-class">Per class</h2>
{_per_class_html(report)}
<h2 id="pairs">Class pairs</h2>
{_pairs_html(report)}
<h2 id="inputs">Inputs</h2>
{kv_table(report.inputs)}
<h2 id="settings">Settings</h2>
{kv_table(report.settings)}
<h2 id="timings">Timings (seconds)</h2>
{kv_table({k: round(v, 4) if isinstance(v, float) else v for k, v in report.timings.items()})}
<p class="sub">Report schema {escape(str(report.schema_version))}.</p>"""
    return html_page(f"nc-probe: {source}", body)


def write_html(report: Report, path, figures: dict | None = None, spell=parameter_name) -> Path:
    """Write :func:`report_html` to ``path`` atomically."""
    return atomic_write_text(path, report_html(report, figures, spell))


# ---------------------------------------------------------------------------------------------- comparison
def comparison_html(comparison, figures: dict | None = None, spell=parameter_name) -> str:
    """The page of a :class:`nc_probe.reports.compare.Comparison`: the side-by-side table, CKA, plots, each input."""
    from nc_probe.render.comparison import ARROW, delta_kind, row_delta_text

    if figures is None:
        from nc_probe.render.compare_plots import comparison_figures

        figures = comparison_figures(comparison)
    labels = comparison.labels
    header = ["metric", "direction"] + [h for i, lab in enumerate(labels)
                                           for h in ([lab] if i == 0 else [lab, f"Δ {lab}"])]
    rows = []
    for r in comparison.rows:
        cells = [f"<td><code>{escape(r['metric'])}</code></td>",
                 f"<td>{escape(ARROW.get(r['direction'], ''))} {escape(r['word'] or '-')}</td>"]
        for i, lab in enumerate(labels):
            cells.append(_num_cell(r["values"][lab]))
            if i:
                cls = DELTA_CLASS.get(delta_kind(r, lab), "")
                cells.append(f'<td class="num {cls}">{escape(row_delta_text(r, lab))}</td>')
        rows.append(cells)
    cka = ""
    if comparison.cka:
        c = comparison.cka
        est = "unbiased" if c.get("estimator") == "unbiased" else "biased"
        cka = ("<h2 id=cka>Linear CKA</h2><p class=sub>1 = the same representation up to rotation and isotropic "
               f"scale ({est} HSIC estimator); '-' where two inputs do not hold features of the same samples.</p>"
               + html_table([""] + c["labels"], [[f"<td>{escape(a)}</td>"] + [_num_cell(v) for v in row]
                                             for a, row in zip(c["labels"], c["matrix"])]))
    inputs = []
    for lab, rep in comparison.reports.items():
        i = rep.inputs
        inputs.append([f"<td>{escape(lab)}</td>", f'<td class="wrap"><code>{escape(str(i.get("source")))}</code></td>',
                       f'<td class="wrap"><code>{escape(str(i.get("sha256") or "-"))}</code></td>',
                       _num_cell(i.get("num_samples")), _num_cell(i.get("num_classes")), _num_cell(i.get("dim")),
                       _num_cell(rep.settings_typed.metrics.eps2)])
    details = "".join(f"<details><summary>{escape(lab)}: inputs and settings</summary>{kv_table(rep.inputs)}"
                      f"{kv_table(rep.settings)}</details>" for lab, rep in comparison.reports.items())
    body = f"""<h1>nc-probe comparison</h1>
<p class="sub">{escape(" vs ".join(labels))} &middot; deltas against <b>{escape(comparison.baseline)}</b></p>
{warnings_html(comparison.all_warnings(), spell)}
<h2 id="summary">Metrics side by side</h2>
<p class="sub">"direction": the way the metric moves as features get more collapsed, separated, compressed, diverse
or accurate (see docs/metrics.md). Δ: value minus the baseline's, with that word.</p>
{DELTA_LEGEND}
{html_table(header, rows)}
{cka}
<h2 id="plots">Plots</h2>
{figures_html(figures, COMPARE_CAPTIONS)}
<h2 id="inputs">Inputs</h2>
{html_table(["label", "source", "sha256", "N", "C", "d", "eps^2"], inputs)}
{details}"""
    return html_page("nc-probe comparison: " + " vs ".join(labels), body)


def write_comparison_html(comparison, path, figures: dict | None = None, spell=parameter_name) -> Path:
    return atomic_write_text(path, comparison_html(comparison, figures, spell))
