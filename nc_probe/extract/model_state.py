"""A live model's state, put back after nc-probe has run it: each module's train/eval mode and each parameter's and
buffer's device, dtype and memory format (channels_last). A training loop hands nc-probe the model it is training;
the analysis switches it to eval, may move it to another device or to channels_last, and must leave it as found.

Parameters are restored in place (``p.data = ...``): the Parameter objects an optimizer holds stay the same.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

F = TypeVar("F", bound=Callable[..., Any])


def _format(t: torch.Tensor) -> torch.memory_format:
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class ModelState:
    """What :func:`preserved` restores; :meth:`capture` it, :meth:`restore` it."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modes = [(m, m.training) for m in model.modules()]
        self.tensors = [(t, t.device, t.dtype, _format(t)) for t in self._tensors()]

    def _tensors(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *(b for b in self.model.buffers() if b is not None)]

    @classmethod
    def capture(cls, model: nn.Module) -> ModelState:
        return cls(model)

    def restore(self) -> None:
        for module, training in self.modes:
            module.training = training
        for t, device, dtype, fmt in self.tensors:
            if t.device != device or t.dtype != dtype or _format(t) != fmt:
                t.data = t.data.to(device=device, dtype=dtype, memory_format=fmt)


@contextlib.contextmanager
def preserved(model) -> Iterator[None]:
    """Run the block, then put ``model`` (an ``nn.Module``; anything else is left alone) back as it was."""
    state = ModelState.capture(model) if isinstance(model, nn.Module) else None
    try:
        yield
    finally:
        if state is not None:
            state.restore()


def restores_module(fn: F) -> F:
    """Decorate a function whose first argument may be a live ``nn.Module``: its state is restored afterwards."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with preserved(model):
            return fn(model, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
