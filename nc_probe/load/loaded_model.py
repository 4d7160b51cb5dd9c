"""What loading a checkpoint produces: the model, ready for inference, and what is known about it (shared by the
loaders of every format: :mod:`nc_probe.load.checkpoint`, :mod:`nc_probe.load.hf`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadedModel:
    """A model ready for inference, and what is known about it.

    ``model`` is an ``nn.Module`` (eval mode), a ``torch.jit.ScriptModule`` or a ``torch.export.ExportedProgram``.
    ``metadata`` is the checkpoint's ``"nc_probe"`` dict (arch, data, split, class_names, ...), possibly empty.
    ``format``: "state_dict", "lightning", "safetensors", "pickled", "torchscript", "export" or "module".
    ``notes``: what was done to make it load (prefixes stripped, placeholders used).
    """

    model: Any
    format: str
    source: str
    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
