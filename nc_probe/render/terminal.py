"""Rich terminal rendering of a Report: a header, the metric summary, the class pairs (statistics and the most extreme
pairs by name) and a per-class table (every class when few, the lowest and highest by accuracy when many)."""

from __future__ import annotations

import math

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from nc_probe.core.errors import parameter_name
from nc_probe.core.errors import spell as spell_text
from nc_probe.core.text import format_number as fmt
from nc_probe.core.text import plain_number
from nc_probe.metrics import METRIC_DOCS
from nc_probe.render.tables import per_class_frame
from nc_probe.reports.report import Report

MAX_CLASS_ROWS = 20  # above this many classes, the table shows the lowest and highest half of this by accuracy
TOP_PAIRS = 5  # the most extreme pairs printed per class-pair quantity
PAIR_NAME_CHARS = 18  # longer class names are shortened in the pairs table
# Short headers keep the per-class table inside 80 columns; the caption spells them out.
CLASS_COLUMNS = {"class_name": "class", "n": "n", "acc_model": "acc", "acc_ncc": "acc_ncc", "rank_energy95": "r95",
                 "rank_energy99": "r99", "rank_effective": "r_eff", "coding_rate_class": "R_c"}

# What a collapsed (cross-entropy, terminal phase) and an MCR^2-like model show, per the spec's "Expected shapes".
# "{etf}" is the ETF angle arccos(1/(C-1)) in degrees.
EXPECTED = {
    "nc1": ("0", "large"), "nc1_cdnv": ("0", "large"),
    **{f"nc2_{k}_{m}": ("0", "any") for k in ("equinorm", "equiangle", "maxangle", "etf") for m in "MW"},
    "nc3": ("0", "any"), "nc4": ("0", "any"), "acc_model": ("high", "high"), "acc_ncc": ("high", "high"),
    "rank_energy95": ("1", ">>1"), "rank_energy99": ("~1", ">>1"), "rank_effective": ("~1", ">>1"),
    "rank_numerical": ("any", ">>1"), "coding_rate": ("small", "large"), "coding_rate_class": ("small", "larger"),
    "coding_rate_within": ("small", "larger"), "rate_reduction": ("small", "large"), "coding_rate_max": ("-", "-"),
    "angle_min": ("{etf}", "~90"), "subspace_affinity": ("~0", "~0"), "angle_min_mean": ("{etf}", "~90"),
    "angle_min_min": ("{etf}", "~90"),
    "nc1_quot": ("0", "large"), "vci": ("0", "large"), "nc3_etf": ("0", "any"), "unc3": ("0", "any"),
    "gnc2_log_var": ("0", "any"), "bias_collapse": ("0", "any"),
}


def expected(key: str, num_classes: int | None = None) -> str:
    """'collapsed / MCR^2-like' for a metric key, e.g. '0 / large' ('' for keys without an expectation)."""
    pair = EXPECTED.get(key)
    if pair is None:
        return ""
    etf = f"~{math.degrees(math.acos(1 / (num_classes - 1))):.0f}" if num_classes and num_classes >= 2 else "?"
    return " / ".join(p.format(etf=etf) for p in pair)


def header(report: Report) -> Text:
    i, s = report.inputs, report.settings_typed
    text = Text()
    text.append("nc-probe ", style="bold")
    text.append(f"{i.get('source')}\n")
    text.append(f"N={i.get('num_samples')}  C={i.get('num_classes')}  d={i.get('dim')}  "
                f"eps^2={s.metrics.eps2}  layer={i.get('layer') or '-'}", style="dim")
    return text


MEANING_MIN_WIDTH = 110  # below this the one-line meanings wrap into unreadable cells; --help lists them


def summary_table(report: Report, width: int = 200) -> Table:
    table = Table(title="Metrics", title_justify="left", show_lines=False)
    table.add_column("metric", style="cyan", no_wrap=True)
    table.add_column("value", justify="right")
    table.add_column("collapsed / MCR^2", no_wrap=True)
    meaning = width >= MEANING_MIN_WIDTH
    if meaning:
        table.add_column("meaning", style="dim")
    else:
        table.caption = "nc-probe analyze --help explains each metric"
    C = report.inputs.get("num_classes")
    for key, value in report.metrics.items():
        row = [key, fmt(value), expected(key, C)]
        table.add_row(*row, *([METRIC_DOCS.get(key, "")] if meaning else []))
    return table


def _ranked(df, limit: int) -> tuple[list, str | None]:
    """(row blocks to show, the column they are ranked by): every row up to ``limit``; above it, the ``limit // 2``
    lowest and the rest of ``limit`` highest by accuracy (model, else nearest class centre, else samples)."""
    if len(df) <= limit:
        return [df], None
    key = next((c for c in ("acc_model", "acc_ncc", "n") if c in df.columns and df[c].notna().any()), "n")
    ranked = df.sort_values(key, kind="stable", na_position="first")
    return [ranked.head(limit // 2), ranked.tail(limit - limit // 2)], key


def class_table(report: Report, limit: int = MAX_CLASS_ROWS) -> Table | None:
    """Every class up to ``limit``; above it the lowest and highest classes by accuracy, a gap row between them
    (:func:`class_note` says how many were left out)."""
    df = per_class_frame(report)
    if df.empty:
        return None
    cols = [c for c in CLASS_COLUMNS if c in df.columns and c != "rank_energy99"]
    blocks, key = _ranked(df, limit)
    table = Table(title="Per class" if key is None else f"Per class: lowest and highest {key} of {len(df):,}",
                  title_justify="left",
                  caption="  ".join(f"{CLASS_COLUMNS[c]}={c}" for c in cols if CLASS_COLUMNS[c] not in (c, "class")))
    for c in cols:
        table.add_column(CLASS_COLUMNS[c], justify="left" if c == "class_name" else "right")
    for k, block in enumerate(blocks):
        if k:
            table.add_row(*(["..."] + [""] * (len(cols) - 1)), style="dim")
        for _, row in block[cols].iterrows():
            table.add_row(*[str(row[c]) if c == "class_name" else fmt(plain_number(row[c])) for c in cols])
    return table


def class_note(report: Report, limit: int = MAX_CLASS_ROWS, spell=parameter_name) -> Text | None:
    """The line under a cut per-class table: how many classes it leaves out, and where all of them are."""
    n = len(report.per_class.get("class_ids") or [])
    if n <= limit:
        return None
    text = (f"{n - limit:,} of {n:,} classes left out of the table above; every class is in per_class.csv "
            "(write it with {out=DIR}) and in the report JSON")
    return Text(spell_text(text, spell), style="dim")


def pairs_table(report: Report, top: int = TOP_PAIRS) -> Table | None:
    """Each class-pair quantity: pairs, mean, min, max and its ``top`` most extreme pairs by name."""
    pairs = {k: s for k, s in (report.pairs or {}).items() if isinstance(s, dict) and s.get("count")}
    if not pairs:
        return None
    table = Table(title=f"Class pairs (the {top} most extreme of each)", title_justify="left",
                  caption="the report JSON's pairs hold more of them, and quantiles")
    table.add_column("quantity", style="cyan", no_wrap=True)
    table.add_column("over all pairs", no_wrap=True)
    table.add_column("pair")
    table.add_column("value", justify="right", no_wrap=True)
    for key, s in pairs.items():
        shown = (s.get("top") or [])[:top]
        stats = [f"{int(s['count']):,} pairs"] + [f"{k} {fmt(plain_number(s.get(k)))}" for k in ("mean", "min", "max")]
        table.add_row(f"{key}\n({s.get('top_kind') or '-'} first)", "\n".join(stats),
                      "\n".join(f"{_short(t.get('a_name'))} – {_short(t.get('b_name'))}" for t in shown) or "-",
                      "\n".join(fmt(plain_number(t.get("value"))) for t in shown))
    return table


def _short(name, width: int = PAIR_NAME_CHARS) -> str:
    text = str(name)
    return text if len(text) <= width else text[:width - 1] + "…"


def render_report(report: Report, console: Console | None = None, spell=parameter_name, warn=None) -> None:
    """The header, metric summary, class pairs, per-class table (cut for many classes) and warnings; ``spell``
    spells the settings that notes and warnings name (see nc_probe.core.errors). ``warn``: where the warnings go (the
    CLI's stderr); by default they are printed after the tables."""
    from nc_probe.core.consoles import console as safe_console

    console = console or safe_console()
    parts: list = [header(report), summary_table(report, console.width)]
    for part in (pairs_table(report), class_table(report), class_note(report, spell=spell)):
        if part is not None:
            parts.append(part)
    if warn is None:
        parts += [Text(f"warning: {spell_text(w, spell)}", style="yellow") for w in report.warnings]
    console.print(Group(*parts))
    for w in report.warnings if warn is not None else ():
        warn(str(w))


def modules_table(rows: list[dict], title: str) -> Table:
    """The rows of :func:`nc_probe.analysis.inspection.inspect_checkpoint`: module, type, output shape, params, and
    which taps use it ("default tap": analyze's, the input of the head; "layers": nc-probe layers')."""
    table = Table(title=title, title_justify="left")
    for col in ("module", "type", "output shape", "params", "tap"):
        # module names are what --layer and --layers take: folded onto more lines, never cut; the parameter count
        # keeps its width
        table.add_column(col, justify="right" if col == "params" else "left", overflow="fold",
                         no_wrap=col == "params")
    for r in rows:
        shape = "-" if r.get("output_shape") is None else "x".join(str(s) for s in r["output_shape"])
        taps = [t for t, on in (("default tap", r.get("default_tap")), ("layers", r.get("layer_tap"))) if on]
        table.add_row(r["name"] or "(model)", r["type"], shape, f"{r.get('params', 0):,}", ", ".join(taps))
    return table
