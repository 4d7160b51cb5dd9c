"""Feature taps (step 3 of the pipeline): a model and an input batch in, the tapped features ``(n, d)`` out.

- by default the INPUT of the final ``nn.Linear`` that runs in the forward pass (the penultimate features), together
  with that layer's ``W`` and ``b``; "final" is decided by running the first batch, not by registration order;
- with ``layer=NAME`` the OUTPUT of that module, flattened to ``(n, -1)``; the model's output is kept as logits when
  it is an ``(n, C)`` tensor.

Eager ``nn.Module`` models are tapped with forward hooks (:mod:`.module`); TorchScript archives by rewriting the
forward graph so that it returns the tapped value (:mod:`.script`); ``torch.export`` programs by rewriting their FX
graph (:mod:`.export`).
"""

from __future__ import annotations

import torch
from torch import nn

from nc_probe.core.errors import InputError
from nc_probe.taps.base import Tap
from nc_probe.taps.export import ExportTap
from nc_probe.taps.module import ModuleTap
from nc_probe.taps.script import ScriptTap

__all__ = ["ExportTap", "ModuleTap", "ScriptTap", "Tap", "make_tap"]


def make_tap(model, *, layer: str | None = None) -> Tap:
    """A :class:`Tap` for an ``nn.Module``, a TorchScript module or a ``torch.export.ExportedProgram``.

    Hooks stay on an eager model until ``tap.close()``; use ``with make_tap(model) as tap: ...``.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return ScriptTap(model, layer)
    if isinstance(model, torch.export.ExportedProgram):
        return ExportTap(model, layer)
    if isinstance(model, nn.Module):
        return ModuleTap(model, layer)
    raise InputError(f"cannot run a {type(model).__name__} as a model", fix="pass an nn.Module or a checkpoint")
