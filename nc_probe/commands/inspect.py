"""``nc-probe inspect CHECKPOINT``: list modules, output shapes and parameter counts, and the default tap."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated


def inspect(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to inspect.")],
    arch: Annotated[Optional[str], typer.Option("--arch", help="Architecture for a state_dict (see analyze).")] = None,
    arch_kwargs: Annotated[Optional[str], typer.Option("--arch-kwargs", help="JSON kwargs of the factory.")] = None,
    strip_prefix: Annotated[Optional[str], typer.Option("--strip-prefix", help="Prefix to drop from keys.")] = None,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint",
                                                   help="Allow unpickling a full nn.Module.")] = False,
):
    """List a checkpoint's modules with output shapes and parameter counts, and which layer analyze taps."""
    from rich.console import Console
    from rich.table import Table

    from ..pipeline import inspect_checkpoint
    from .analyze import checkpoint_options

    opts = checkpoint_options(arch=arch, arch_kwargs=arch_kwargs, strip_prefix=strip_prefix,
                              trust_checkpoint=trust_checkpoint or None)
    opts.pop("data_classes", None)
    rows = inspect_checkpoint(checkpoint, **opts)
    table = Table(title=str(checkpoint), title_justify="left")
    for col, justify in (("module", "left"), ("type", "left"), ("output shape", "left"), ("params", "right"),
                         ("tap", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        shape = "-" if r.get("output_shape") is None else "x".join(str(s) for s in r["output_shape"])
        table.add_row(r["name"] or "(model)", r["type"], shape, f"{r.get('params', 0):,}",
                      "default tap" if r.get("default_tap") else "")
    Console().print(table)


def register(app: typer.Typer, user_errors) -> None:
    app.command("inspect")(user_errors(inspect))
