"""Taps on eager ``nn.Module`` models, with forward hooks."""

from __future__ import annotations

import torch
from torch import nn

from nc_probe.core.errors import InputError
from nc_probe.taps.base import Tap, call_model, flatten_rows, logits_of, numpy64, suggest_names


class ModuleTap(Tap):
    """Forward hooks on an eager ``nn.Module``."""

    def __init__(self, model: nn.Module, layer: str | None):
        self.model = model
        self.requested = layer
        self._handles = []
        self._captured = None
        names = [n for n, _ in model.named_modules() if n]
        if layer is not None:
            try:
                module = model.get_submodule(layer)
            except AttributeError:
                close = suggest_names(layer, names)
                raise InputError(f"{{layer}} {layer!r} is not a module of the model (close: {close})",
                                 fix="see nc-probe inspect for the module names") from None
            self._handles.append(module.register_forward_hook(self._on_output))
            self.layer = layer
            self.num_outputs = _last_linear_out(model)
        else:
            self._linears = {m: n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
            if not self._linears:
                raise InputError("the model has no nn.Linear layer, so there is no default tap",
                                 fix="pass {layer=NAME} (see nc-probe inspect for the module names)")
            self._last = None
            for m in self._linears:
                self._handles.append(m.register_forward_pre_hook(self._on_any_linear))
        self._resolved = layer is not None

    def _on_output(self, module, args, output):
        # Cloned because a later in-place op (ReLU(inplace=True) after a BatchNorm, say) would change it.
        self._captured = output.clone() if isinstance(output, torch.Tensor) else output

    def _on_any_linear(self, module, args):
        self._last = (module, args[0] if args else None)

    def _on_input(self, module, args):
        self._captured = args[0] if args else None

    def _resolve(self):
        if self._last is None:
            raise InputError("no nn.Linear ran in the forward pass, so there is no default tap",
                             fix="pass {layer=NAME} (see nc-probe inspect for the module names)")
        module, inp = self._last
        for h in self._handles:
            h.remove()
        self._handles = [module.register_forward_pre_hook(self._on_input)]
        name = self._linears[module]
        if not isinstance(inp, torch.Tensor) or inp.ndim != 2:
            shape = tuple(inp.shape) if isinstance(inp, torch.Tensor) else type(inp).__name__
            raise InputError(f"the final nn.Linear {name!r} gets inputs of shape {shape}, not one feature vector "
                             "per sample", fix="pass {layer=NAME} to tap a module's output instead")
        self.layer = f"{name} (input)"
        self.W, self.b = numpy64(module.weight), numpy64(module.bias)
        self.num_outputs = module.out_features
        self._resolved = True
        self._linears = None
        return inp

    def to(self, device, channels_last=False) -> ModuleTap:
        self.model.to(device)
        if channels_last and device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in self.model.modules()):
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.channels_last = True
        return self

    def __call__(self, x):
        if getattr(self, "channels_last", False) and isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self._captured = None
        out = call_model(self.model, x)
        feats = self._resolve() if not self._resolved else self._captured
        where = f"{{layer}} {self.layer}" if self.requested else self.layer
        if feats is None:
            raise InputError(f"{where} did not run in the forward pass", fix="pick another {layer}")
        feats = flatten_rows(feats, where)
        return feats, logits_of(out, len(feats), self.num_outputs)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _last_linear_out(model: nn.Module) -> int | None:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return None if last is None else last.out_features
