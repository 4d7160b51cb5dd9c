"""Rich terminal rendering of a Report: a header, the metric summary and (for few classes) a per-class table."""

from __future__ import annotations

import math

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..metrics import METRIC_DOCS
from ..report import Report
from .tables import per_class_frame

MAX_CLASS_ROWS = 20
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
}


def expected(key: str, num_classes: int | None = None) -> str:
    """'collapsed / MCR^2-like' for a metric key, e.g. '0 / large' ('' for keys without an expectation)."""
    pair = EXPECTED.get(key)
    if pair is None:
        return ""
    etf = f"~{math.degrees(math.acos(1 / (num_classes - 1))):.0f}" if num_classes and num_classes >= 2 else "?"
    return " / ".join(p.format(etf=etf) for p in pair)


def fmt(value, digits: int = 4) -> str:
    """Numbers as a person reads them: ints plain, small/large floats in scientific notation, absent as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    v = float(value)
    if v == 0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1e5:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".")


def header(report: Report) -> Text:
    i, s = report.inputs, report.settings
    text = Text()
    text.append("nc-probe ", style="bold")
    text.append(f"{i.get('source')}\n")
    text.append(f"N={i.get('num_samples')}  C={i.get('num_classes')}  d={i.get('dim')}  "
                f"eps^2={s.get('eps2')}  layer={i.get('layer') or '-'}", style="dim")
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


def class_table(report: Report, limit: int = MAX_CLASS_ROWS) -> Table | None:
    df = per_class_frame(report)
    if len(df) > limit:
        return None
    cols = [c for c in CLASS_COLUMNS if c in df.columns and c != "rank_energy99"]
    table = Table(title="Per class", title_justify="left",
                  caption="  ".join(f"{CLASS_COLUMNS[c]}={c}" for c in cols if CLASS_COLUMNS[c] not in (c, "class")))
    for c in cols:
        table.add_column(CLASS_COLUMNS[c], justify="left" if c == "class_name" else "right")
    for _, row in df[cols].iterrows():
        table.add_row(*[str(row[c]) if c == "class_name" else fmt(_py(row[c])) for c in cols])
    return table


def _py(v):
    if v is None:
        return None
    try:
        if isinstance(v, float) or hasattr(v, "dtype") and v.dtype.kind == "f":
            return float(v)
        return int(v)
    except (TypeError, ValueError):
        return v


def render_report(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    parts = [header(report), summary_table(report, console.width)]
    ct = class_table(report)
    if ct is not None:
        parts.append(ct)
    for w in report.warnings:
        parts.append(Text(f"warning: {w}", style="yellow"))
    console.print(Group(*parts))
