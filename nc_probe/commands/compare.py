"""``nc-probe compare LABEL=PATH LABEL=PATH [...]``: analyses side by side, with deltas, CKA, plots and HTML."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from .analyze import OUTPUT, analysis_arguments, with_analysis_options


@with_analysis_options
def compare(
    inputs: Annotated[List[str], typer.Argument(
        help="Two or more LABEL=PATH (a bare PATH is labelled by its file name), each a checkpoint, a feature file "
             "or a report JSON. The first is the baseline of the deltas.", show_default=False)],
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the comparison JSON here.",
                                                      rich_help_panel=OUTPUT)] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Write a self-contained HTML page here.",
                                                 rich_help_panel=OUTPUT)] = None,
    plots: Annotated[Optional[Path], typer.Option("--plots", help="Write the plots (PNG and SVG) into this folder.",
                                                  rich_help_panel=OUTPUT)] = None,
    cka: Annotated[bool, typer.Option("--cka/--no-cka", help="Linear CKA between inputs that hold features of the "
                                                              "same samples.", rich_help_panel=OUTPUT)] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.",
                                        rich_help_panel=OUTPUT)] = False,
    **analysis,
):
    """Compare analyses side by side: metric deltas (and which way is more collapsed), CKA, plots."""
    from ..compare import compare_inputs, render_comparison

    from ..compare import parse_specs
    from .outputs import OutputSet

    outputs = OutputSet({"--json": json_path, "--html": html, "--plots": plots}, dirs=("--plots",),
                        inputs=list(parse_specs(inputs).values()) + [analysis.get("data")])
    settings, ckpt = analysis_arguments(analysis, quiet)
    comparison = compare_inputs(inputs, checkpoint_options=ckpt, cka=cka, **settings)
    with outputs.transaction() as staged:
        if plots is not None or html is not None:
            from ..render.html import write_comparison_html
            from ..render.plots import comparison_figures, write_visuals

            write_visuals(comparison, plots=staged.get("--plots"), html=staged.get("--html"),
                          figures_of=comparison_figures, write_page=write_comparison_html)
        if json_path is not None:
            comparison.save(staged["--json"])
    if not quiet:
        render_comparison(comparison)


def register(app: typer.Typer, user_errors) -> None:
    app.command("compare")(user_errors(compare))
