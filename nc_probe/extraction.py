"""Batched inference with a feature tap (step 3 of the pipeline): model + batches -> ClassStats + FeatureStore.

A :class:`Tap` wraps a model and returns, for an input batch, the tapped features ``(n, d)`` (and the model's
logits when they are cheap to have):

- by default the INPUT of the final ``nn.Linear`` that runs in the forward pass (the penultimate features), together
  with that layer's ``W`` and ``b``; "final" is decided by running the first batch, not by registration order;
- with ``layer=NAME`` the OUTPUT of that module, flattened to ``(n, -1)``; the model's output is kept as logits when
  it is an ``(n, C)`` tensor.

Eager ``nn.Module`` models are tapped with forward hooks; TorchScript archives by rewriting the forward graph so that
it returns the tapped value, once every method call is inlined (``layer``: any sub-module whose forward runs outside a
loop, at any depth); ``torch.export`` programs by rewriting their FX graph (``layer`` is matched through the recorded
module hierarchy).

:func:`extract` runs the batches under ``torch.inference_mode`` (autocast when asked, pinned memory and
``non_blocking`` copies and ``channels_last`` on CUDA), checks every batch for NaN/Inf, and streams the features into
a :class:`~nc_probe.stats.ClassStats` on the device and into a FeatureStore, in memory or written with
:class:`~nc_probe.store.StoreWriter`; the dataset itself is never held in memory.

This module imports only what is downstream of it: stats, store and errors.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .stats import ClassStats, check_memory
from .store import FeatureStore, StoreWriter, open_store

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------- devices
def resolve_device(device="auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device that is not available is an InputError."""
    name = str(device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a device", fix="pass auto, cpu, cuda, cuda:N or mps") \
            from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda, but CUDA is not available here", fix="pass --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps, but MPS is not available here", fix="pass --device cpu or auto")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {device!r} is not supported", fix="pass auto, cpu, cuda or mps")
    return dev


def amp_context(amp: str, device: torch.device):
    """Autocast for ``amp`` ("bf16", "fp16" or "off")."""
    if amp not in AMP_DTYPES:
        raise InputError(f"--amp {amp!r} is not one of bf16, fp16, off", fix="pass --amp bf16, fp16 or off")
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def stats_device(device: torch.device) -> torch.device:
    """Where the float64 statistics live: the model's device, except MPS (no float64 there)."""
    return device if device.type == "cuda" else torch.device("cpu")


# ---------------------------------------------------------------------------------------------- taps
class Tap:
    """Calls a model and returns ``(features (n, d) float32, logits (n, C) or None)``.

    After the first call: ``layer`` names what is tapped (e.g. ``"head (input)"``), ``W``/``b`` are the final
    linear classifier as float64 numpy arrays when the tap is its input (else None), ``num_outputs`` is the
    number of classes the model predicts when known.
    """

    layer: str = ""
    W: np.ndarray | None = None
    b: np.ndarray | None = None
    num_outputs: int | None = None
    static_batch: int | None = None

    def to(self, device: torch.device, channels_last: bool = False) -> "Tap":
        return self

    def __call__(self, x):
        raise NotImplementedError

    def close(self) -> None:
        """Remove hooks; the model is left as it was."""

    def __enter__(self) -> "Tap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def call_model(model, x):
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def _flat(t, where: str) -> torch.Tensor:
    if isinstance(t, (tuple, list)):
        t = next((v for v in t if isinstance(v, torch.Tensor)), None)
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{where} produced no tensor to tap", fix="pick another --layer (see nc-probe inspect)")
    if t.ndim == 0:
        raise InputError(f"{where} produced a scalar, not one feature vector per sample",
                         fix="pick another --layer (see nc-probe inspect)")
    return t.reshape(t.shape[0], -1)


def _logits(out, n: int, num_outputs: int | None):
    """The model's output when it looks like the logits of its final nn.Linear (n, num_outputs)."""
    if num_outputs is not None and isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == n \
            and out.is_floating_point() and out.shape[1] == num_outputs:
        return out
    return None


def _numpy64(t) -> np.ndarray | None:
    return None if t is None else t.detach().to("cpu", torch.float64).numpy().copy()


def _suggest(name: str, names: list) -> str:
    import difflib

    close = difflib.get_close_matches(name, names, n=3)
    pool = close or names[:6]
    return ", ".join(pool) + (", ..." if not close and len(names) > 6 else "")


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
                raise InputError(f"--layer {layer!r} is not a module of the model (close: {_suggest(layer, names)})",
                                 fix="see nc-probe inspect for the module names") from None
            self._handles.append(module.register_forward_hook(self._on_output))
            self.layer = layer
            self.num_outputs = _last_linear_out(model)
        else:
            self._linears = {m: n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
            if not self._linears:
                raise InputError("the model has no nn.Linear layer, so there is no default tap",
                                 fix="pass --layer NAME (see nc-probe inspect for the module names)")
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
                             fix="pass --layer NAME (see nc-probe inspect for the module names)")
        module, inp = self._last
        for h in self._handles:
            h.remove()
        self._handles = [module.register_forward_pre_hook(self._on_input)]
        name = self._linears[module]
        if not isinstance(inp, torch.Tensor) or inp.ndim != 2:
            shape = tuple(inp.shape) if isinstance(inp, torch.Tensor) else type(inp).__name__
            raise InputError(f"the final nn.Linear {name!r} gets inputs of shape {shape}, not one feature vector "
                             "per sample", fix="pass --layer NAME to tap a module's output instead")
        self.layer = f"{name} (input)"
        self.W, self.b = _numpy64(module.weight), _numpy64(module.bias)
        self.num_outputs = module.out_features
        self._resolved = True
        self._linears = None
        return inp

    def to(self, device, channels_last=False):
        self.model.to(device)
        if channels_last and device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in self.model.modules()):
            self.model.to(memory_format=torch.channels_last)
            self.channels_last = True
        return self

    def __call__(self, x):
        if getattr(self, "channels_last", False) and isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self._captured = None
        out = call_model(self.model, x)
        feats = self._resolve() if not self._resolved else self._captured
        where = f"--layer {self.layer}" if self.requested else self.layer
        if feats is None:
            raise InputError(f"{where} did not run in the forward pass", fix="pick another --layer")
        feats = _flat(feats, where)
        return feats, (_logits(out, len(feats), self.num_outputs) if self.requested else None)

    def close(self):
        for h in self._handles:
            h.remove()
        self._handles = []


def _last_linear_out(model: nn.Module) -> int | None:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return None if last is None else last.out_features


def _attr_path(value) -> str | None:
    """``self.a.b.weight`` for a TorchScript value produced by a chain of prim::GetAttr, else None."""
    names = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        names.append(node.s("name"))
        value = node.inputsAt(0)
        node = value.node()
    if node.kind() != "prim::Param":
        return None
    return ".".join(reversed(names))


def _get_attr(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class ScriptTap(Tap):
    """A TorchScript module whose forward graph is rewritten to return the tapped value.

    Every method call is inlined first, so the default tap finds the final linear layer wherever it runs (in
    timm's ``forward_head``, in ``self.classifier.fc``) and ``layer`` may name any sub-module whose forward runs,
    by its dotted path (``head``, ``blocks.1``, ``classifier.fc``).

    A graph keeps the branches of the Python code that depend on run-time values (an attribute such as timm's
    ``grad_checkpointing``, an argument such as ``attn_mask``): a module called in several branches is tapped at
    each call, and what the last call that ran returned is kept, as a forward hook would. Likewise the default
    tap is decided on the first batch among the linear layers that may run last, like :class:`ModuleTap`'s.
    """

    def __init__(self, module, layer: str | None):
        self.module = module
        self.requested = layer
        try:
            graph = module.forward.graph.copy()
        except (AttributeError, RuntimeError):
            raise InputError("the TorchScript module has no forward method", fix="save a module with a forward") \
                from None
        # The graph's function has no default values: trailing arguments the caller leaves out (timm's ViT has
        # forward(x, attn_mask=None, is_causal=False)) are filled in from the forward's schema.
        self._defaults = [(a.has_default_value(), a.default_value) for a in module.forward.schema.arguments[1:]]
        try:
            self._build(module, graph, layer)
        except RuntimeError as e:  # a graph that the JIT passes or the rewrite do not handle: one line, not C++
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise InputError(f"the TorchScript forward could not be rewritten to return the tapped value ({first})",
                             fix="save a state_dict and load it with --arch to tap with forward hooks") from None

    def _build(self, module, graph, layer: str | None) -> None:
        """Make ``self._fn``, the rewritten forward, returning what each call of the tapped module returned."""
        kept = len(list(graph.outputs()))
        paths = _inline_module_calls(module, graph)
        torch._C._jit_pass_inline(graph)  # what is left: free functions, calls on values that are not attributes
        # Default arguments (timm's forward_head(x, pre_logits=False)) become constants only once inlined; folding
        # them removes the branches they decide, so that e.g. the head runs unconditionally again. Only values
        # that are not tensors are folded: a folded tensor would become a constant that .to(device) cannot move.
        torch._C._jit_pass_constant_propagation_immutable_types(graph)
        calls: dict[str, list] = {}  # dotted path -> what each of its calls returned, in program order
        for path, value in reversed(list(zip(paths, list(graph.outputs())[kept:]))):
            if not isinstance(value.type(), torch._C.NoneType):  # None: a call in a branch that never runs
                calls.setdefault(path, []).append(value)
        # Shallow names first: when nothing is close to a wrong name, the top-level modules are the best hint.
        names = sorted(calls, key=lambda name: name.count("."))
        self._choices = None
        self._pick = None
        if layer is None:
            values = self._default(module, graph, names)
        else:
            values = calls.get(layer)
            if not values:
                known = layer in {n for n, _ in module.named_modules()}
                what = "runs only in a loop of the TorchScript forward, or not at all" if known else \
                    "is not a module that the TorchScript forward calls"
                raise InputError(f"--layer {layer!r} {what} (tappable: {_suggest(layer, names)})",
                                 fix="name the module by its dotted path from the top-level module, as nc-probe "
                                     "inspect lists them")
            self.layer = layer
            self.tap_module = layer
        while len(list(graph.outputs())):
            graph.eraseOutput(0)
        for value in values:
            graph.registerOutput(value)
        self._count = len(values)
        if self._count > 1:
            graph.makeMultiOutputIntoTuple()
        torch._C._jit_pass_dce(graph)
        self._fn = torch._C._create_function_from_graph("nc_probe_tap", graph)

    def _default(self, module, graph, names) -> list:
        """The inputs of the linear layers that may run last; sets W, b, layer from the last of them."""
        found = [(node, nested, _linear_parts(module, node)) for node, nested in _linear_nodes(graph.block())]
        found = [(node, nested, parts) for node, nested, parts in found if parts is not None]
        if not found:
            raise InputError("the TorchScript graph has no linear layer, so there is no default tap",
                             fix=f"pass --layer NAME (tappable: {_suggest('', names)})")
        # Those before the last one that runs unconditionally never run last.
        start = max((i for i, (_, nested, _) in enumerate(found) if not nested), default=0)
        values, self._choices = [], []
        for node, _, (x, w_path, weight, bias) in found[start:]:
            value = _lift(graph, _copy_at(graph, node, x))
            if value is not None:
                owner = w_path.rsplit(".", 1)[0] if w_path and "." in w_path else ""
                values.append(value)
                self._choices.append((owner, weight, bias))
        if not values:
            raise InputError("the final linear layer of the TorchScript graph runs where it cannot be tapped",
                             fix=f"pass --layer NAME (tappable: {_suggest('', names)})")
        self._choose(len(self._choices) - 1)
        return values

    def _choose(self, index: int) -> None:
        owner, weight, bias = self._choices[index]
        self.layer = f"{owner or 'linear'} (input)"
        self.tap_module = owner
        if weight is None:
            raise InputError(f"the final linear layer of the TorchScript graph ({self.layer}) has no stored weight",
                             fix="pass --layer NAME (see nc-probe inspect for the module names)")
        self.W, self.b = _numpy64(weight), _numpy64(bias)
        self.num_outputs = int(weight.shape[0])

    def to(self, device, channels_last=False):
        self.module.to(device)
        return self

    def __call__(self, x):
        args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        missing = self._defaults[len(args):]
        if all(has for has, _ in missing):
            args += tuple(value for _, value in missing)
        out = self._fn(self.module._c, *args)
        outs = (out,) if self._count == 1 else out
        index = self._pick
        if index is None:  # the last call that ran (None: each one is in a branch this input did not take)
            index = next((i for i in reversed(range(self._count)) if outs[i] is not None), None)
            if self._choices is not None and index is not None:
                self._choose(index)
                self._pick = index
        if index is None or outs[index] is None:
            where = f"--layer {self.layer}" if self.requested else self.layer
            raise InputError(f"{where} did not run in the forward pass", fix="pick another --layer")
        return _flat(outs[index], self.layer), None


def _inline_module_calls(module, graph) -> list[str]:
    """Inline every method call on a sub-module (``self.head.forward``) or on ``self`` (``self.forward_head``),
    registering as an extra graph output a copy of what each sub-module's forward returned, taken at its call.
    Returns their dotted paths in the order of those outputs: the reverse of program order (with the nodes of
    each branch after those of the branch before it).

    Calls are inlined one at a time rather than by ``_jit_pass_inline`` because only at the call site is it known
    which module ran and what it returned: after a blanket inline the nodes keep only loose call-stack names, and
    a module that returns its input (Identity, Dropout in eval) leaves no node of its own. The graph is walked
    backwards, so each inlined body, which lands just before its call, is walked next: every node once.
    """
    paths: list[str] = []

    def walk(block):
        node = block.returnNode().prev()
        while node.kind() != "prim::Param":  # a block's node list starts after its Param node
            prev = node.prev()
            for sub in reversed(list(node.blocks())):
                walk(sub)
            callee, path = _callee(module, node) if node.kind() == "prim::CallMethod" else (None, None)
            if callee is not None:
                with graph.insert_point_guard(node):
                    result = graph.insertGraph(callee.graph, list(node.inputs()))[0]
                node.output().replaceAllUsesWith(result)
                # forward__0, forward__1: the overloads of a forward declared with @torch.jit._overload_method (LSTM)
                if path and re.fullmatch(r"forward(__\d+)?", node.s("name")):
                    mark = _lift(graph, _copy_at(graph, node, result))
                    if mark is not None:
                        graph.registerOutput(mark)
                        paths.append(path)
                prev = node.prev()
                node.destroy()
            node = prev

    walk(graph.block())
    return paths


def _callee(module, node):
    """The method a prim::CallMethod runs and the dotted path of its receiver, or (None, None) when the receiver
    is not a sub-module reached by attributes (an interface, which is dispatched at run time)."""
    receiver = node.inputsAt(0)
    path = _attr_path(receiver)
    if path is None or not isinstance(receiver.type(), torch._C.ClassType):
        return None, None
    try:
        return (_get_attr(module, path) if path else module)._c._get_method(node.s("name")), path
    except (AttributeError, RuntimeError):
        return None, None


def _lift(graph, value):
    """``value`` made visible at the top of ``graph``: each prim::If around it gets one more output, ``value`` from
    the branch that computes it and None from the others. None when ``value`` is computed inside a loop."""
    while True:
        block = value.node().owningBlock()
        owner = block.owningNode()
        if owner is None:
            return value
        if owner.kind() != "prim::If":
            return None
        count = owner.outputsSize()  # what each branch returns; the branch of value gets one more first
        block.registerOutput(value)
        with graph.insert_point_guard(owner):
            none = graph.insertConstant(None)
        for other in owner.blocks():
            if other.returnNode().inputsSize() == count:
                other.registerOutput(none)
        out = owner.addOutput()
        kind = value.type()
        out.setType(kind if isinstance(kind, (torch._C.OptionalType, torch._C.NoneType))
                    else torch._C.OptionalType(kind))
        value = out


_LINEAR_KINDS = ("aten::linear", "aten::addmm", "aten::matmul", "aten::mm")


def _linear_nodes(block, nested=False):
    """The nodes that may be linear layers, in program order, with whether they sit in a branch; loops are skipped
    (what they compute cannot be returned)."""
    for node in block.nodes():
        if node.kind() == "prim::If":
            for sub in node.blocks():
                yield from _linear_nodes(sub, True)
        elif node.kind() in _LINEAR_KINDS:
            yield node, nested


def _linear_parts(module, node):
    """``(input, weight path, W, b)`` when ``node`` is a linear layer, else None: an ``aten::linear`` (W None when
    its weight is computed, not stored), or the ``aten::addmm`` / ``aten::matmul`` (+ ``aten::add`` of the bias)
    that traces of ``nn.Linear`` recorded before PyTorch had ``aten::linear``. The latter count only with the
    weight of an ``nn.Linear``: a matmul with a stored matrix (CLIP's ``x @ self.proj``) is not a layer that the
    eager tap would pick either."""
    kind = node.kind()
    bias_value = None
    if kind == "aten::linear":
        x, w_value, bias_value = node.inputsAt(0), node.inputsAt(1), node.inputsAt(2)
    else:
        if kind == "aten::addmm":
            if not (_constant(node.inputsAt(3)) == 1 and _constant(node.inputsAt(4)) == 1):
                return None
            bias_value, x, w_value = node.inputsAt(0), node.inputsAt(1), node.inputsAt(2)
        else:
            x, w_value = node.inputsAt(0), node.inputsAt(1)
            uses = node.output().uses()
            if len(uses) == 1 and uses[0].user.kind() in ("aten::add", "aten::add_") and uses[0].offset < 2 \
                    and _constant(uses[0].user.inputsAt(2)) == 1:
                bias_value = uses[0].user.inputsAt(1 - uses[0].offset)
        if w_value.node().kind() != "aten::t":  # nn.Linear computes x @ W.t()
            return None
        w_value = w_value.node().inputsAt(0)
    w_path = _attr_path(w_value)
    weight = None if w_path is None else _get_attr(module, w_path)
    if kind != "aten::linear":
        owner = _get_attr(module, w_path.rsplit(".", 1)[0]) if w_path and "." in w_path else None
        if getattr(owner, "original_name", None) != "Linear" or not w_path.endswith(".weight"):
            return None
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return x, None, None, None
    b_path = _attr_path(bias_value) if bias_value is not None else None
    bias = _get_attr(module, b_path) if b_path else None
    if not (isinstance(bias, torch.Tensor) and bias.shape == weight.shape[:1]):
        bias = None  # no bias, or an add of something else (the input of the next block)
    return x, w_path, weight, bias


def _constant(value):
    return value.toIValue() if value.node().kind() == "prim::Constant" else None


def _copy_at(graph, node, value):
    """A copy of ``value`` taken just before ``node`` runs: what a hook on that call would see, unchanged by later
    in-place ops (ReLU(inplace=True)); inside the branch that runs ``node``, so that the copy exists only when
    ``node`` runs."""
    if not isinstance(value.type(), torch._C.TensorType):
        return value
    with graph.insert_point_guard(node):
        copy = graph.insertNode(graph.create("aten::clone", [value, graph.insertConstant(None)]))
    copy.output().setType(value.type())
    return copy.output()


class ExportTap(Tap):
    """A ``torch.export`` program whose FX graph is rewritten to return the tapped value.

    A program exported with a fixed batch size runs on batches padded (or split) to that size.
    """

    def __init__(self, program, layer: str | None):
        import torch.fx as fx

        gm = program.module()
        graph = fx.Graph()
        mapping = {}
        graph.graph_copy(gm.graph, mapping)
        tapped = fx.GraphModule(gm, graph)
        nodes = list(tapped.graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        val = placeholders[0].meta.get("val") if placeholders else None
        if val is not None and hasattr(val, "shape") and len(val.shape) and isinstance(val.shape[0], int):
            self.static_batch = int(val.shape[0])
        self.requested = layer
        if layer is None:
            linear_ops = {torch.ops.aten.linear.default, torch.ops.aten.addmm.default}
            linears = [n for n in nodes if n.op == "call_function" and n.target in linear_ops]
            if not linears:
                raise InputError("the exported graph has no linear layer, so there is no default tap",
                                 fix="pass --layer NAME (see nc-probe inspect)")
            node = linears[-1]
            if node.target == torch.ops.aten.linear.default:
                target, w_node = node.args[0], node.args[1]
                b_node = node.args[2] if len(node.args) > 2 else None
                weight = self._const(tapped, w_node)
            else:  # addmm(bias, input, weight.T)
                target, b_node = node.args[1], node.args[0]
                wt = node.args[2]
                src = wt.args[0] if getattr(wt, "op", None) == "call_function" else None
                weight = None if src is None else self._const(tapped, src)
                weight = None if weight is None else (weight if weight.shape[1] == _shape(target)[-1] else weight.T)
            if weight is None:
                raise InputError("the final linear layer of the exported graph has no stored weight",
                                 fix="pass --layer NAME (see nc-probe inspect)")
            bias = self._const(tapped, b_node) if b_node is not None else None
            self.W, self.b = _numpy64(weight), _numpy64(bias)
            self.num_outputs = int(weight.shape[0])
            stack = node.meta.get("nn_module_stack") or {}
            owner = list(stack.values())[-1][0] if stack else ""
            self.tap_module = owner
            self.layer = f"{owner or 'linear'} (input)"
        else:
            # The module's output is the last of its nodes that is used outside the module (a BatchNorm, say, ends
            # in several getitem nodes of which only one leaves it).
            target = None
            paths = set()
            scope = {}
            for n in nodes:
                stack = n.meta.get("nn_module_stack") or {}
                scope[n] = {_clean_path(p) for p, _ in stack.values()}
                paths |= scope[n]
            for n in nodes:
                if n.op == "call_function" and layer in scope[n] \
                        and any(layer not in scope.get(u, set()) for u in n.users):
                    target = n
            if target is None:
                raise InputError(f"--layer {layer!r} is not a module of the exported program (close: "
                                 f"{_suggest(layer, sorted(p for p in paths if p))})",
                                 fix="see nc-probe inspect for the module names")
            self.layer = layer
            self.tap_module = layer
        if isinstance(target.meta.get("val"), torch.Tensor):
            with tapped.graph.inserting_after(target):  # a copy before any later in-place op can change it
                target = tapped.graph.call_function(torch.ops.aten.clone.default, (target,))
        output = next((n for n in tapped.graph.nodes if n.op == "output"), None)
        if output is None:  # graph_copy copies every node but the output
            tapped.graph.output(target)
        else:
            output.args = (target,)
        tapped.graph._codegen = fx.graph.CodeGen()
        tapped.graph.eliminate_dead_code()
        tapped.recompile()
        self.gm = tapped

    @staticmethod
    def _const(gm, node):
        if node is None or getattr(node, "op", None) != "get_attr":
            return None
        return _get_attr(gm, node.target)

    def to(self, device, channels_last=False):
        self.gm.to(device)
        return self

    def __call__(self, x):
        if self.static_batch is None or not isinstance(x, torch.Tensor) or len(x) == self.static_batch:
            args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
            return _flat(self.gm(*args), self.layer), None
        parts = []
        B = self.static_batch
        for start in range(0, len(x), B):
            chunk = x[start:start + B]
            n = len(chunk)
            if n < B:  # pad with copies of the last sample; their features are dropped
                chunk = torch.cat([chunk, chunk[-1:].expand(B - n, *chunk.shape[1:])])
            parts.append(_flat(self.gm(chunk), self.layer)[:n])
        return torch.cat(parts), None


def _shape(node):
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return tuple(val.shape) if val is not None and hasattr(val, "shape") else ()


def _clean_path(path: str) -> str:
    """nn_module_stack paths may carry export's ``L['self']`` spelling; reduce them to ``a.b.c``."""
    import re

    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\._modules\['([^']+)'\]", r".\1", path)
    return path.lstrip(".")


# ---------------------------------------------------------------------------------------------- extraction
@dataclass
class Extraction:
    """What :func:`extract` produced: the FeatureStore, the statistics accumulated on the way (None when the
    class count was not known in advance; then the analysis accumulates them from the store), and timings."""

    store: FeatureStore
    stats: ClassStats | None
    layer: str
    num_samples: int
    seconds: float
    warnings: list = field(default_factory=list)
    spill_dir: str | None = None  # a temporary folder holding the store when it outgrew the memory budget

    def cleanup(self) -> None:
        """Remove the spilled feature file (call once the store is no longer read)."""
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir = None

    @property
    def samples_per_s(self) -> float:
        return self.num_samples / self.seconds if self.seconds > 0 else float("nan")


def extract(tap: Tap, batches: Iterable, *, device="cpu", amp: str = "off", declared_classes: int | None = None,
            subspace_classes=None, memory_budget: int = 2 * 1024**3, save_features=None, class_names=None,
            metadata=None, source: str = "<model>", data_name: str = "the data", progress=None,
            total: int | None = None) -> Extraction:
    """Run ``batches`` of ``(x, y)`` through ``tap`` and stream the features into statistics and a FeatureStore.

    The class count C of the statistics is the largest of ``declared_classes`` (what the data declares), the
    classifier's rows and the logits' columns; when none is known, no statistics are accumulated here (the
    analysis then makes them from the store). When the tap is the classifier's input, labels must be below its row
    count and ``declared_classes`` must equal it, else an InputError naming ``source`` and ``data_name``.

    ``subspace_classes``/``memory_budget``: as ``classes``/``memory_budget`` of the analysis. ``save_features``:
    write the store to this path (safetensors) instead of keeping it in memory. ``metadata``: a dict, or a callable
    returning one once extraction is over (e.g. to wait for a checksum). ``progress``: a callable
    ``(samples_done, total)`` called after each batch, or None.
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    sdev = stats_device(device)
    non_blocking = device.type == "cuda"
    ctx = amp_context(amp, device)
    stats = None
    writer = None
    feats_parts, label_parts, logit_parts = [], [], []
    warnings = []
    done = 0
    top = -1
    first = True
    label_bound = None
    has_logits = False
    feeder = _StatsFeeder(sdev)
    held = 0
    spill_dir = None
    if save_features is not None:
        writer = StoreWriter(save_features, class_names=class_names)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for x, y in batches:
                x = _to_device(x, device, non_blocking)
                with ctx:
                    feats, logits = tap(x)
                if len(feats) != len(y):
                    raise InputError(f"{tap.layer} gave {len(feats)} feature rows for a batch of {len(y)} samples",
                                     path=source, fix="tap a layer that keeps the batch dimension (--layer)")
                feats = feats.float()
                if not bool(torch.isfinite(feats).all()):
                    bad = done + int((~torch.isfinite(feats)).any(1).nonzero()[0, 0])
                    raise InputError(f"the features of {tap.layer} contain NaN or Inf (first at sample {bad} of "
                                     f"{data_name})", path=source,
                                     fix="run with --amp off, or check the model and its input normalisation")
                if first:
                    first = False
                    has_logits = logits is not None
                    if tap.W is not None:
                        label_bound = tap.num_outputs
                        if declared_classes is not None and declared_classes != tap.num_outputs:
                            raise InputError(f"{data_name} has {declared_classes} classes but the classifier "
                                             f"({tap.layer}) has {tap.num_outputs} outputs", path=source,
                                             fix="pass the data the model was trained on (--data); for an image "
                                                 "folder with some of its classes, map folders to class indices "
                                                 "with --class-map (a .txt of the classifier's class names, one "
                                                 "per line, or JSON {folder: index})")
                    sizes = [declared_classes, tap.num_outputs if tap.W is not None else None,
                             logits.shape[1] if has_logits else None]
                    sizes = [s for s in sizes if s]
                    if sizes:
                        C = max(sizes)
                        tracked, warning = check_memory(C, feats.shape[1], subspace_classes, memory_budget)
                        if warning:
                            warnings.append(warning)
                        with torch.inference_mode(False):  # normal tensors: callers may merge into them later
                            stats = ClassStats(C, feats.shape[1], subspace_classes=tracked, device=sdev)
                batch_top = int(y.max())
                top = max(top, batch_top)
                if label_bound is not None and batch_top >= label_bound:
                    raise InputError(f"{data_name} has label {batch_top} but the classifier ({tap.layer}) has "
                                     f"{label_bound} outputs", path=source,
                                     fix="pass the data the model was trained on (--data), or select classes with "
                                         "--data-classes")
                if stats is not None:
                    if batch_top >= stats.num_classes:
                        stats = None  # more classes than declared: the analysis accumulates from the store
                    elif feats.shape[1] != stats.dim:
                        raise InputError(f"{tap.layer} gave {feats.shape[1]} features per sample after "
                                         f"{stats.dim} in earlier batches", path=source,
                                         fix="make all inputs the same shape (e.g. --image-size)")
                    else:
                        feeder.add(stats, feats, y)
                h = feats.cpu().numpy()
                yl = y.cpu().numpy().astype(np.int64, copy=False)
                held += h.nbytes + yl.nbytes + (logits.shape[0] * logits.shape[1] * 4 if has_logits else 0)
                if writer is None and held > memory_budget:
                    # Larger than the budget: continue on disk, in a file that lives as long as the analysis.
                    spill_dir = tempfile.mkdtemp(prefix="nc-probe-features-")
                    writer = StoreWriter(os.path.join(spill_dir, "features.safetensors"), class_names=class_names)
                    for parts in zip(feats_parts, label_parts, logit_parts or [None] * len(feats_parts)):
                        writer.append(*parts)
                    feats_parts, label_parts, logit_parts = [], [], []
                    warnings.append(f"the features exceed the memory budget ({memory_budget / 2**30:.2f} GiB); "
                                    f"they are kept on disk in {spill_dir} during the analysis")
                if writer is not None:
                    writer.append(h, yl, logits.float().cpu().numpy() if has_logits else None)
                else:
                    feats_parts.append(h)
                    label_parts.append(yl)
                    if has_logits:
                        logit_parts.append(logits.float().cpu().numpy())
                done += len(yl)
                if progress is not None:
                    progress(done, total)
            if stats is not None:
                feeder.flush(stats)
        seconds = time.perf_counter() - t0
        if done == 0:
            raise InputError(f"{data_name} gave no samples", path=source,
                             fix="check --data, --split, --data-classes and --limit")
        meta = metadata() if callable(metadata) else dict(metadata or {})
        if writer is not None:
            writer.metadata = meta
            path = writer.close(W=tap.W, b=tap.b)
            store = open_store(path)
        else:
            store = FeatureStore.from_arrays(
                np.concatenate(feats_parts), np.concatenate(label_parts),
                logits=np.concatenate(logit_parts) if has_logits else None,
                W=tap.W, b=tap.b, class_names=class_names, metadata=meta, source=source)
    except BaseException:
        if writer is not None:
            writer.abort()
        if spill_dir is not None:
            shutil.rmtree(spill_dir, ignore_errors=True)
        raise
    sizes = [top + 1] + ([len(tap.W)] if tap.W is not None else []) + ([logits.shape[1]] if has_logits else [])
    return Extraction(store=store, stats=fit_stats(stats, max(sizes)), layer=tap.layer, num_samples=done,
                      seconds=seconds, warnings=warnings, spill_dir=spill_dir)


class _StatsFeeder:
    """Feeds ClassStats in chunks of a fixed number of rows, whatever the batch size.

    Each update has a fixed cost of order C d^2 (per-class Gram matrices, merges) besides the n d^2 of the batch
    itself, so small inference batches would make the statistics the bottleneck; chunks of about 32 MiB of float64
    make that cost negligible. Fixed chunk boundaries also make the statistics independent of the batch size.
    """

    def __init__(self, device):
        self.device = device
        self.feats: list = []
        self.labels: list = []
        self.rows = 0
        self.chunk = None

    def add(self, stats: ClassStats, feats: torch.Tensor, y: torch.Tensor) -> None:
        if self.chunk is None:
            self.chunk = int(min(8192, max(256, (4 << 20) // max(stats.dim, 1))))
        self.feats.append(feats.to(self.device))
        self.labels.append(y.to(self.device))
        self.rows += len(y)
        if self.rows >= self.chunk:
            h, lab = torch.cat(self.feats), torch.cat(self.labels)
            full = (self.rows // self.chunk) * self.chunk
            for start in range(0, full, self.chunk):
                stats.update(h[start:start + self.chunk], lab[start:start + self.chunk])
            self.feats, self.labels = [h[full:]], [lab[full:]]
            self.rows -= full

    def flush(self, stats: ClassStats) -> None:
        if self.rows:
            stats.update(torch.cat(self.feats), torch.cat(self.labels))
        self.feats, self.labels, self.rows = [], [], 0


def _to_device(x, device, non_blocking):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=non_blocking)
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device, non_blocking) for v in x)
    if isinstance(x, dict):
        return {k: _to_device(v, device, non_blocking) for k, v in x.items()}
    return x


def fit_stats(stats: ClassStats | None, num_classes: int) -> ClassStats | None:
    """``stats`` with exactly ``num_classes`` classes: classes above it had no samples, so dropping them is exact.
    Returns None when the statistics cannot be fitted (more classes than accumulated): the analysis then
    accumulates its own."""
    if stats is None or stats.num_classes == num_classes:
        return stats
    if num_classes > stats.num_classes or int(stats.count[num_classes:].sum()) != 0:
        return None
    tracked = None if stats.all_tracked else [c for c in stats.subspace_classes if c < num_classes]
    out = ClassStats(num_classes, stats.dim, subspace_classes=tracked, device=stats.device)
    C = num_classes
    out.count.copy_(stats.count[:C])
    out.mean.copy_(stats.mean[:C])
    out.m2.copy_(stats.m2[:C])
    out.scatter.copy_(stats.scatter)
    out.zero_norm.copy_(stats.zero_norm[:C])
    keep = [slot for slot, c in enumerate(stats.subspace_classes) if c < C]
    if keep:
        out.zz.copy_(stats.zz[keep])
    if out.zz_total is not None:
        out.zz_total.copy_(stats.zz_total if stats.zz_total is not None else stats.zz.sum(0))
    return out
