"""A Comparison in the terminal: the side-by-side table with deltas and their words, and the CKA matrix."""

from __future__ import annotations

from rich.table import Table

from nc_probe.core.errors import parameter_name
from nc_probe.core.errors import spell as spell_text
from nc_probe.core.text import format_number as fmt

ARROW = {"lower": "↓", "higher": "↑"}
NO_CHANGE = "no change"
# Colours say which way a value moved, never whether that is good: one hue for "more <word>", another for "less
# <word>", grey for no change (the HTML pages use the same three).
STYLES = {"more": "blue", "less": "dark_orange", "none": "grey50"}
LEGEND = ("Δ colours say the direction, not better or worse: blue = more collapsed / separated / compressed / ... "
          "(the metric's word), orange = less, grey = no change (within the metric's resolution, docs/metrics.md)")


def delta_text(delta, moved, word=None, changed=None) -> str:
    """'-0.123 more collapsed' (moved in the metric's direction), '+0.5 less separated', '+2' (no direction),
    'no change' (zero, or ``changed`` False: within the metric's resolution), '-' (absent)."""
    if delta is None:
        return "-"
    if delta == 0 or changed is False:
        return NO_CHANGE
    text = f"{delta:+.3g}"
    if moved is not None and word:
        text += " " + (word if moved else word.replace("more ", "less ", 1))
    return text


def delta_kind(row: dict, label: str) -> str:
    """'more', 'less' or 'none' (no change) for a row's delta of ``label``; '' when absent or without direction."""
    delta, moved = row["deltas"].get(label), row["moved"].get(label)
    if delta is None:
        return ""
    if delta == 0 or row.get("changed", {}).get(label) is False:
        return "none"
    return {True: "more", False: "less"}.get(moved, "")


def row_delta_text(row: dict, label: str) -> str:
    return delta_text(row["deltas"][label], row["moved"][label], row["word"], row.get("changed", {}).get(label))


def comparison_table(comparison, labels: list[str] | None = None) -> Table:
    """A rich Table: metric, which way is collapsed, each input's value and its change against the baseline
    (``labels``: the baseline and the inputs to show, default all)."""
    from rich.table import Table
    from rich.text import Text

    labels = labels or comparison.labels
    table = Table(title=f"Comparison (Δ: change against {comparison.baseline})", title_justify="left")
    table.add_column("metric", style="cyan", min_width=15, overflow="fold")
    table.add_column("", justify="center", no_wrap=True, min_width=1)
    for i, lab in enumerate(labels):
        table.add_column(lab, justify="right", no_wrap=True, min_width=6)
        if i:
            table.add_column(f"Δ {lab}", justify="right", no_wrap=True, min_width=9)
    for r in comparison.rows:
        cells = [r["metric"], ARROW.get(r["direction"], "")]
        for i, lab in enumerate(labels):
            cells.append(fmt(r["values"][lab]))
            if i:
                cells.append(Text(row_delta_text(r, lab), style=STYLES.get(delta_kind(r, lab), "")))
        table.add_row(*cells)
    return table


def cka_table(comparison) -> Table:
    from rich.table import Table

    cka = comparison.cka
    table = Table()
    table.add_column("")
    for lab in cka["labels"]:
        table.add_column(lab, justify="right")
    for lab, row in zip(cka["labels"], cka["matrix"]):
        table.add_row(lab, *[fmt(v) for v in row])
    return table


def render_comparison(comparison, console=None, spell=parameter_name, warn=None) -> None:
    """The inputs, the table (one per input when too wide), the legend, CKA, and every warning: the comparison's
    and each input's, labelled (:meth:`~nc_probe.reports.compare.Comparison.all_warnings`). ``warn``: where warnings go
    (the CLI's stderr); by default they are printed after the tables."""
    from rich.console import Group
    from rich.measure import Measurement
    from rich.text import Text

    from nc_probe.core.consoles import console as safe_console

    console = console or safe_console()
    parts: list = []
    for lab, rep in comparison.reports.items():
        i = rep.inputs
        parts.append(Text(f"{lab}: {i.get('source')}  N={i.get('num_samples')} C={i.get('num_classes')} "
                          f"d={i.get('dim')}", style="dim"))
    table = comparison_table(comparison)
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if len(comparison.labels) > 2 and natural > console.width:
        # too wide for this terminal: the baseline against one input at a time
        parts += [comparison_table(comparison, [comparison.baseline, lab]) for lab in comparison.labels[1:]]
    else:
        parts.append(table)
    parts.append(Text(f"↓/↑: the way a metric moves as features get more collapsed, separated, compressed, ... "
                      f"(docs/metrics.md); Δ words compare with {comparison.baseline}; (mean): mean over classes",
                      style="dim"))
    parts.append(Text(LEGEND, style="dim"))
    if comparison.cka:
        estimator = "unbiased HSIC" if comparison.cka.get("estimator") == "unbiased" else "biased HSIC"
        parts.append(Text(f"Linear CKA, {estimator} estimator (1 = the same representation up to rotation and "
                          "scale)", style="italic"))
        parts.append(cka_table(comparison))
    warnings = comparison.all_warnings()
    if warn is None:
        parts += [Text(f"warning: {spell_text(w, spell)}", style="yellow") for w in warnings]
    console.print(Group(*parts))
    if warn is not None:
        for w in warnings:
            warn(w)
