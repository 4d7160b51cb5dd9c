"""A Comparison in the terminal: the side-by-side table with deltas and their words, and the CKA matrix."""

from __future__ import annotations

from rich.table import Table

from ..errors import parameter_name
from ..errors import spell as spell_text
from ..text import format_number as fmt

ARROW = {"lower": "↓", "higher": "↑"}


def delta_text(delta, moved, word=None) -> str:
    """'-0.123 more collapsed' (moved in the metric's direction), '+0.5 less separated', '+2' (no direction), '0',
    '-' (absent)."""
    if delta is None:
        return "-"
    if delta == 0:
        return "0"
    text = f"{delta:+.3g}"
    if moved is not None and word:
        text += " " + (word if moved else word.replace("more ", "less ", 1))
    return text


def comparison_table(comparison, labels: list[str] | None = None) -> Table:
    """A rich Table: metric, which way is collapsed, each input's value and its change against the baseline
    (``labels``: the baseline and the inputs to show, default all)."""
    from rich.table import Table
    from rich.text import Text

    labels = labels or comparison.labels
    table = Table(title=f"Comparison (Δ: change against {comparison.baseline})", title_justify="left")
    table.add_column("metric", style="cyan", min_width=15)
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
                moved = r["moved"][lab]
                style = "magenta" if moved else ("green" if moved is False else "")
                cells.append(Text(delta_text(r["deltas"][lab], moved, r["word"]), style=style))
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


def render_comparison(comparison, console=None, spell=parameter_name) -> None:
    from rich.console import Group
    from rich.measure import Measurement
    from rich.text import Text

    from ..consoles import console as safe_console

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
    if comparison.cka:
        estimator = "unbiased HSIC" if comparison.cka.get("estimator") == "unbiased" else "biased HSIC"
        parts.append(Text(f"Linear CKA, {estimator} estimator (1 = the same representation up to rotation and "
                          "scale)", style="italic"))
        parts.append(cka_table(comparison))
    for w in comparison.warnings:
        parts.append(Text(f"warning: {spell_text(w, spell)}", style="yellow"))
    console.print(Group(*parts))
