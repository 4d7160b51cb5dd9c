"""Taps on TorchScript archives: the forward graph is rewritten to return the tapped value."""

from __future__ import annotations

import re

import torch

from nc_probe.core.errors import InputError
from nc_probe.taps.base import Tap, flatten_rows, get_attr_path, numpy64, suggest_names


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
                             fix="save a state_dict and load it with {arch} to tap with forward hooks") from None

    def _build(self, module, graph, layer: str | None) -> None:
        """Make ``self._fn``, the rewritten forward, returning what each call of the tapped module returned."""
        kept = len(list(graph.outputs()))
        paths = _inline_module_calls(module, graph)
        torch._C._jit_pass_inline(graph)  # what is left: free functions, calls on values that are not attributes
        # Default arguments (timm's forward_head(x, pre_logits=False)) become constants only once inlined; folding
        # them removes the branches they decide, so that e.g. the head runs unconditionally again. Only values
        # that are not tensors are folded: a folded tensor would become a constant that .to(device) cannot move.
        torch._C._jit_pass_constant_propagation_immutable_types(graph)  # type: ignore[attr-defined]
        calls: dict[str, list] = {}  # dotted path -> what each of its calls returned, in program order
        for path, value in reversed(list(zip(paths, list(graph.outputs())[kept:]))):
            if not isinstance(value.type(), torch._C.NoneType):  # None: a call in a branch that never runs
                calls.setdefault(path, []).append(value)
        # Shallow names first: when nothing is close to a wrong name, the top-level modules are the best hint.
        names = sorted(calls, key=lambda name: name.count("."))
        self._choices: list[tuple] | None = None
        self._pick: int | None = None
        if layer is None:
            values = self._default(module, graph, names)
        else:
            values = calls.get(layer) or []
            if not values:
                known = layer in {n for n, _ in module.named_modules()}
                what = "runs only in a loop of the TorchScript forward, or not at all" if known else \
                    "is not a module that the TorchScript forward calls"
                raise InputError(f"{{layer}} {layer!r} {what} (tappable: {suggest_names(layer, names)})",
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
                             fix=f"pass {{layer=NAME}} (tappable: {suggest_names('', names)})")
        # Those before the last one that runs unconditionally never run last.
        start = max((i for i, (_, nested, _) in enumerate(found) if not nested), default=0)
        values, choices = [], []
        for node, _, (x, w_path, weight, bias) in found[start:]:
            value = _lift(graph, _copy_at(graph, node, x))
            if value is not None:
                owner = w_path.rsplit(".", 1)[0] if w_path and "." in w_path else ""
                values.append(value)
                choices.append((owner, weight, bias))
        self._choices = choices
        if not values:
            raise InputError("the final linear layer of the TorchScript graph runs where it cannot be tapped",
                             fix=f"pass {{layer=NAME}} (tappable: {suggest_names('', names)})")
        self._choose(len(choices) - 1)
        return values

    def _choose(self, index: int) -> None:
        assert self._choices is not None  # set by _default
        owner, weight, bias = self._choices[index]
        self.layer = f"{owner or 'linear'} (input)"
        self.tap_module = owner
        if weight is None:
            raise InputError(f"the final linear layer of the TorchScript graph ({self.layer}) has no stored weight",
                             fix="pass {layer=NAME} (see nc-probe inspect for the module names)")
        self.W, self.b = numpy64(weight), numpy64(bias)
        self.num_outputs = int(weight.shape[0])

    def to(self, device, channels_last=False) -> ScriptTap:
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
            where = f"{{layer}} {self.layer}" if self.requested else self.layer
            raise InputError(f"{where} did not run in the forward pass", fix="pick another {layer}")
        return flatten_rows(outs[index], self.layer), None


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
        return (get_attr_path(module, path) if path else module)._c._get_method(node.s("name")), path
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
    weight = None if w_path is None else get_attr_path(module, w_path)
    if kind != "aten::linear":
        owner = get_attr_path(module, w_path.rsplit(".", 1)[0]) if w_path and "." in w_path else None
        if getattr(owner, "original_name", None) != "Linear" or not w_path.endswith(".weight"):
            return None
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return x, None, None, None
    b_path = _attr_path(bias_value) if bias_value is not None else None
    bias = get_attr_path(module, b_path) if b_path else None
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
