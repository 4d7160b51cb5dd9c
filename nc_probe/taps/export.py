"""Taps on ``torch.export`` programs: the FX graph is rewritten to return the tapped value."""

from __future__ import annotations

import torch

from nc_probe.core.errors import InputError
from nc_probe.taps.base import Tap, flatten_rows, get_attr_path, numpy64, suggest_names


class ExportTap(Tap):
    """A ``torch.export`` program whose FX graph is rewritten to return the tapped value.

    A program exported with a fixed batch size runs on batches padded (or split) to that size.
    """

    def __init__(self, program, layer: str | None):
        import torch.fx as fx

        gm = program.module()
        graph = fx.Graph()
        graph.graph_copy(gm.graph, {})
        tapped = fx.GraphModule(gm, graph)
        nodes = list(tapped.graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        val = placeholders[0].meta.get("val") if placeholders else None
        if val is not None and hasattr(val, "shape") and len(val.shape) and isinstance(val.shape[0], int):
            self.static_batch = int(val.shape[0])
        self.requested = layer
        target = self._head_input(tapped, nodes) if layer is None else self._module_output(nodes, layer)
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

    def _head_input(self, tapped, nodes):
        """The input node of the last linear op, with its weight and bias as W and b."""
        linear_ops = {torch.ops.aten.linear.default, torch.ops.aten.addmm.default}
        linears = [n for n in nodes if n.op == "call_function" and n.target in linear_ops]
        if not linears:
            raise InputError("the exported graph has no linear layer, so there is no default tap",
                             fix="pass {layer=NAME} (see nc-probe inspect)")
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
                             fix="pass {layer=NAME} (see nc-probe inspect)")
        bias = self._const(tapped, b_node) if b_node is not None else None
        self.W, self.b = numpy64(weight), numpy64(bias)
        self.num_outputs = int(weight.shape[0])
        stack = node.meta.get("nn_module_stack") or {}
        owner = list(stack.values())[-1][0] if stack else ""
        self.tap_module = owner
        self.layer = f"{owner or 'linear'} (input)"
        return target

    def _module_output(self, nodes, layer: str):
        """The output node of module ``layer``: the last of its nodes that is used outside the module (a BatchNorm,
        say, ends in several getitem nodes of which only one leaves it)."""
        target = None
        paths: set = set()
        scope = {}
        for n in nodes:
            stack = n.meta.get("nn_module_stack") or {}
            scope[n] = {clean_path(p) for p, _ in stack.values()}
            paths |= scope[n]
        for n in nodes:
            if n.op == "call_function" and layer in scope[n] \
                    and any(layer not in scope.get(u, set()) for u in n.users):
                target = n
        if target is None:
            raise InputError(f"{{layer}} {layer!r} is not a module of the exported program (close: "
                             f"{suggest_names(layer, sorted(p for p in paths if p))})",
                             fix="see nc-probe inspect for the module names")
        self.layer = layer
        self.tap_module = layer
        return target

    @staticmethod
    def _const(gm, node):
        if node is None or getattr(node, "op", None) != "get_attr":
            return None
        return get_attr_path(gm, node.target)

    def to(self, device, channels_last=False) -> ExportTap:
        self.gm.to(device)
        return self

    def __call__(self, x):
        if self.static_batch is None or not isinstance(x, torch.Tensor) or len(x) == self.static_batch:
            args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
            return flatten_rows(self.gm(*args), self.layer), None
        parts = []
        B = self.static_batch
        for start in range(0, len(x), B):
            chunk = x[start:start + B]
            n = len(chunk)
            if n < B:  # pad with copies of the last sample; their features are dropped
                chunk = torch.cat([chunk, chunk[-1:].expand(B - n, *chunk.shape[1:])])
            parts.append(flatten_rows(self.gm(chunk), self.layer)[:n])
        return torch.cat(parts), None


def _shape(node):
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return tuple(val.shape) if val is not None and hasattr(val, "shape") else ()


def clean_path(path: str) -> str:
    """nn_module_stack paths may carry export's ``L['self']`` spelling; reduce them to ``a.b.c``."""
    import re

    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\._modules\['([^']+)'\]", r".\1", path)
    return path.lstrip(".")
