"""``nc-probe inspect CHECKPOINT``: list modules, output shapes and parameter counts, and the default tap."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nc_probe.cli import options as o
from nc_probe.cli.shell import out_console, user_errors
from nc_probe.core.progress import phase, shown

Checkpoint = Annotated[Path, typer.Argument(help="Checkpoint to inspect (or sample:NAME).", show_default=False)]
InspectImageSize = Annotated[int | None, o.option(
    "--image-size", "The side of the example image whose forward pass gives the output shapes (channels from the "
                    "checkpoint, else its first Conv2d) [default: the checkpoint's input_shape, else 32 and 224 "
                    "tried].", o.DATA)]


def inspect(checkpoint: Checkpoint, arch: o.Arch = None, arch_kwargs: o.ArchKwargs = None,
            strip_prefix: o.StripPrefix = None, trust_checkpoint: o.TrustCheckpoint = False,
            layers: o.Layers = None, image_size: InspectImageSize = None) -> None:
    """List a checkpoint's modules with output shapes and parameter counts, which layer analyze taps, and which
    modules nc-probe layers taps (with --layers, that selection)."""
    from nc_probe.analysis.inspection import inspect_checkpoint
    from nc_probe.render.terminal import modules_table

    settings = o.build_settings(locals())
    with shown(), phase("loading the model and running an example through it"):
        rows = inspect_checkpoint(checkpoint, settings.model, layers=layers, image_size=image_size)
    out_console.print(modules_table(rows, str(checkpoint)))


def register(app: typer.Typer) -> None:
    app.command("inspect", cls=o.Command)(user_errors(inspect))
