"""Many taps in one forward pass: the features of every selected layer of an eager ``nn.Module``.

Each tapped output is reduced inside its hook, before the next layer runs, so that no full activation map is kept:

- conv maps ``(n, C, H, W)`` (and 3-D ones) by global average pooling over the spatial axes;
- token outputs ``(n, T, d)`` by the class token (``cls``: position 0, the default when the model has a class token,
  as timm's and torchvision's ViTs do) or the token mean (``mean``, the default otherwise);
- features wider than ``max_dim`` by a seeded Gaussian random projection to ``max_dim`` dimensions (scaled by
  ``1/sqrt(max_dim)``, so squared norms are kept in expectation; Johnson-Lindenstrauss), recorded per layer.

:data:`~nc_probe.taps.select.PENULTIMATE` is the input of the final ``nn.Linear`` (decided on the first batch, as
the single-layer tap does), with that layer's W and b.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nc_probe.core.errors import InputError
from nc_probe.core.settings import POOLS
from nc_probe.taps.base import call_model, logits_of, numpy64
from nc_probe.taps.select import PENULTIMATE

DEFAULT_MAX_DIM = 2048


@dataclass
class LayerInfo:
    """How one layer's features were made: the raw output shape per sample, the reduction, the projection."""

    name: str
    shape: tuple = ()
    pool: str = "none"
    raw_dim: int = 0
    dim: int = 0
    projection_seed: int | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "pool": self.pool, "raw_dim": self.raw_dim,
                "dim": self.dim, "projection_seed": self.projection_seed}


def require_eager(model, path=None) -> None:
    """Layer taps hook modules: refuse a TorchScript module or a torch.export program, which have no hooks."""
    if isinstance(model, torch.jit.ScriptModule) or not isinstance(model, nn.Module):
        raise InputError("layer taps need an eager nn.Module (a state_dict, Lightning or safetensors checkpoint "
                         "with its architecture); TorchScript and torch.export files tap one layer", path=path,
                         fix="save the model's state_dict and pass {arch}, or analyze one {layer} at a time")


class LayerTaps:
    """Forward hooks on several modules; ``taps(x)`` returns ``({name: (n, d) features}, logits or None)``.

    ``W``, ``b``, ``num_outputs``: the final ``nn.Linear``'s (known after the first call). ``infos``: a
    :class:`LayerInfo` per layer. Use as a context manager (or call :meth:`close`) to remove the hooks.
    """

    def __init__(self, model: nn.Module, names: list[str], *, pool: str = "auto", max_dim: int = DEFAULT_MAX_DIM):
        require_eager(model)
        if pool not in POOLS:
            raise InputError(f"{{pool}} {pool!r} is not one of {', '.join(POOLS)}", fix="use {pool=auto}")
        self.model, self.names, self.pool, self.max_dim = model, list(names), pool, int(max_dim)
        # a model may say how its token outputs become per-sample rows (nc_probe.load.hf's wrappers): "cls" (the
        # classifier reads the first token), "last" (the last real token), "token" (every position is a sample)
        self.layer_pool = getattr(model, "layer_pool", None)
        if self.layer_pool == "token" and pool != "auto":
            raise InputError("a causal language model's layers are analysed token by token (each position a sample "
                             f"whose class is the next token), so {{pool={pool}}} does not apply",
                             fix="leave {pool} out")
        self.has_class_token = self.layer_pool == "cls" or any(hasattr(model, a) for a in ("cls_token", "class_token"))
        self.infos = {n: LayerInfo(n) for n in self.names}
        self.W: np.ndarray | None = None
        self.b: np.ndarray | None = None
        self.num_outputs: int | None = None
        self._out: dict[str, torch.Tensor] = {}
        self._order: list[str] = []  # layer names in the order their outputs first appeared
        self._projections: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in self.names:
            if name != PENULTIMATE:
                module = model.get_submodule(name)
                self._handles.append(module.register_forward_hook(self._hook(name)))
        self._linears = {m: n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        self._last_linear: nn.Linear | None = None
        self._last_input: torch.Tensor | None = None
        self._head: nn.Linear | None = None
        if self._linears:
            for m in self._linears:
                self._handles.append(m.register_forward_pre_hook(self._on_linear))
        elif PENULTIMATE in self.names:
            raise InputError("the model has no nn.Linear layer, so there is no @penultimate layer",
                             fix="select layers by name in {layers}")

    # ------------------------------------------------------------------------------------------------ hooks
    def _hook(self, name: str):
        def on_output(module, args, output):
            t = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(t, torch.Tensor):
                self._out[name] = self._reduce(name, t)
                if name not in self._order:
                    self._order.append(name)
        return on_output

    def _on_linear(self, module, args):
        inp = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if self._head is None:  # first batch: every linear's input, until the last one is known
            self._last_linear = module
            self._last_input = None if inp is None else inp.clone()
        elif module is self._head and PENULTIMATE in self.names and inp is not None:
            self._out[PENULTIMATE] = self._reduce(PENULTIMATE, inp)

    def _reduce(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """The layer's (n, d) features from its raw output (see the module docstring)."""
        info = self.infos[name]
        if not info.shape:
            info.shape = tuple(t.shape[1:])
        if t.ndim == 2:
            h, how = t.clone(), "none"  # cloned: a later in-place op (ReLU(inplace=True)) would change it
        elif t.ndim == 3 and self.layer_pool == "token":  # token-level rows: every position with a next token
            h, how = t[self._token_mask()].clone(), "token"
        elif t.ndim == 3:
            how = self.pool if self.pool != "auto" else ("cls" if self.has_class_token else "mean")
            if how == "cls":
                h = t[:, 0].clone()
            elif self.layer_pool == "last" and self.pool == "auto":
                mask = self._token_mask()
                h, how = t[torch.arange(len(t), device=t.device), mask.long().sum(1) - 1].clone(), "last"
            elif self._token_mask() is not None:  # the mean over real tokens, not padding
                m = self._token_mask().to(t.dtype).unsqueeze(-1)
                h = (t * m).sum(1) / m.sum(1).clamp_min(1)
            else:
                h = t.mean(1)
            how = "mean" if how == "gap" else how
        elif t.ndim >= 4:
            if self.pool == "cls":
                raise InputError(f"{{pool}} cls takes the class token of (n, T, d) outputs, but layer {name!r} gives "
                                 f"maps of shape {tuple(t.shape[1:])}", fix="use {pool=auto} or {pool=gap}")
            h, how = t.mean(dim=tuple(range(2, t.ndim))), "gap"
        else:
            raise InputError(f"layer {name!r} gives one number per batch, not per sample",
                             fix="pick other {layers} (see nc-probe inspect)")
        info.pool, info.raw_dim = how, h.shape[1]
        h = h.float()
        if h.shape[1] > self.max_dim:
            h = h @ self._projection(name, h.shape[1], h.device)
        info.dim = h.shape[1]
        return h

    def _token_mask(self) -> Any:
        """The (n, T) mask of the batch's real tokens, when the model keeps one (nc_probe.load.hf's wrappers)."""
        return getattr(self.model, "token_mask", None)

    def _projection(self, name: str, width: int, device) -> torch.Tensor:
        P = self._projections.get(name)
        if P is None:
            seed = zlib.crc32(name.encode())
            gen = torch.Generator().manual_seed(seed)
            P = torch.randn(width, self.max_dim, generator=gen) / math.sqrt(self.max_dim)
            self._projections[name] = P = P.to(device)
            self.infos[name].projection_seed = seed
        return P

    # ------------------------------------------------------------------------------------------------ calls
    def to(self, device: torch.device, channels_last: bool = False) -> LayerTaps:
        self.model.to(device)
        return self

    def __call__(self, x) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        self._out = {}
        out = call_model(self.model, x)
        if self._head is None:
            self._resolve_head()
        missing = [n for n in self.names if n not in self._out]
        if missing:
            raise InputError(f"{{layers}} {', '.join(missing[:5])} did not run (or gave no tensor) in the forward "
                             "pass", fix="pick layers that run (see nc-probe inspect)")
        feats = {n: self._out[n] for n in self.names}
        n = len(next(iter(feats.values())))
        return feats, logits_of(out, n, self.num_outputs)

    def _resolve_head(self) -> None:
        """After the first forward pass: the last nn.Linear that ran is the head; its input is @penultimate."""
        head, inp = self._last_linear, self._last_input
        self._last_input = None
        if head is None:
            if PENULTIMATE in self.names:
                raise InputError("no nn.Linear ran in the forward pass, so there is no @penultimate layer",
                                 fix="select layers by name in {layers}")
            return
        self._head = head
        self.W, self.b = numpy64(head.weight), numpy64(head.bias)
        self.num_outputs = head.out_features
        if PENULTIMATE in self.names:
            if inp is None or inp.ndim != 2:
                shape = None if inp is None else tuple(inp.shape)
                raise InputError(f"the final nn.Linear {self._linears[head]!r} gets inputs of shape {shape}, not one "
                                 "feature vector per sample, so there is no @penultimate layer",
                                 fix="select layers by name in {layers}")
            self._out[PENULTIMATE] = self._reduce(PENULTIMATE, inp)
            self._order.append(PENULTIMATE)

    def forward_order(self) -> list[str]:
        """The tapped layers in the order the forward pass reached them (known after the first call)."""
        return [n for n in self._order if n in self.names]

    def head_name(self) -> str | None:
        """The final ``nn.Linear``'s module name (known after the first call)."""
        return None if self._head is None else self._linears[self._head]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> LayerTaps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
