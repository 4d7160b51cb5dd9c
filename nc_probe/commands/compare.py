"""``nc-probe compare LABEL=PATH LABEL=PATH [...]``: analyses side by side, with deltas, CKA, plots and HTML."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from .analyze import DATA, METRICS, OUTPUT, checkpoint_options, settings_from_options


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
    eps2: Annotated[float, typer.Option("--eps2", help="MCR^2 distortion eps^2 of the coding rates.",
                                        rich_help_panel=METRICS)] = 0.5,
    subspace_dim: Annotated[Optional[int], typer.Option(
        "--subspace-dim", help="Fix the basis size k of every class subspace.", rich_help_panel=METRICS)] = None,
    rank_tol: Annotated[float, typer.Option("--rank-tol", help="Relative eigenvalue cut-off of rank_numerical.",
                                            rich_help_panel=METRICS)] = 1e-6,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Class ids whose subspace metrics are "
                                                                      "computed, e.g. 0-9.",
                                                   rich_help_panel=METRICS)] = None,
    memory_budget: Annotated[str, typer.Option("--memory-budget", help="Memory for the per-class statistics.",
                                               rich_help_panel=METRICS)] = "2GiB",
    data: Annotated[Optional[str], typer.Option("--data", help="Data of checkpoint inputs (as in analyze).",
                                                rich_help_panel=DATA)] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Dataset split.", rich_help_panel=DATA)] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use at most N samples.",
                                                 rich_help_panel=DATA)] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.", rich_help_panel=DATA)] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Inference batch size.",
                                            rich_help_panel=DATA)] = 256,
    trust_checkpoint: Annotated[bool, typer.Option(
        "--trust-checkpoint", help="Allow unpickling arbitrary code. Only for files you trust.",
        rich_help_panel=DATA)] = False,
):
    """Compare analyses side by side: metric deltas (and which way is more collapsed), CKA, plots."""
    from ..compare import compare_inputs, render_comparison

    settings = settings_from_options(eps2, rank_tol, subspace_dim, classes, memory_budget)
    ckpt = checkpoint_options(arch_kwargs=None, trust_checkpoint=trust_checkpoint or None, data=data, split=split,
                              limit=limit, device=device, batch_size=batch_size, progress=not quiet or None)
    comparison = compare_inputs(inputs, checkpoint_options=ckpt, cka=cka, **settings)
    figures = None
    if plots is not None or html is not None:
        from ..render.plots import comparison_figures, save_figures

        figures = comparison_figures(comparison)
        if plots is not None:
            save_figures(figures, plots)
    if html is not None:
        from ..render.html import write_comparison_html

        write_comparison_html(comparison, html, figures)
    if json_path is not None:
        comparison.save(json_path)
    if not quiet:
        render_comparison(comparison)


def register(app: typer.Typer, user_errors) -> None:
    app.command("compare")(user_errors(compare))
