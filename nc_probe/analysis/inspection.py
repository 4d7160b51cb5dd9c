"""``nc-probe inspect``: a checkpoint's modules with output shapes, parameter counts and the default tap."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from nc_probe.analysis.pipeline import load
from nc_probe.core.errors import InputError
from nc_probe.core.settings import ModelSettings
from nc_probe.taps import ExportTap, ScriptTap
from nc_probe.taps.export import clean_path
from nc_probe.taps.select import PENULTIMATE, select_layers

__all__ = ["inspect_checkpoint"]


def inspect_checkpoint(path, settings: ModelSettings | None = None, *, input_shape=None, layers: str | None = None,
                       image_size: int | None = None, **shortcuts) -> list[dict]:
    """One row per module: ``name`` ("" for the whole model), ``type``, ``output_shape`` (per sample, without the
    batch dimension; None when unknown), ``params`` (including sub-modules), ``default_tap`` (True on the
    nn.Linear whose input analyze taps by default) and ``layer_tap`` (True on the modules ``nc-probe layers`` taps
    with ``layers``, default ``@blocks,@penultimate``; ``@penultimate`` marks the head, whose input it is).

    Output shapes come from one forward pass of a zero batch of ``input_shape`` (per sample; default: the
    checkpoint's metadata ``input_shape``, else guessed from the first layer). ``image_size`` builds it for an image
    model instead: channels x image_size x image_size (the channels from the metadata's input_shape, else the first
    Conv2d), and a model that fails on it is an error. TorchScript archives give only the model's output shape and
    the default tap's; torch.export programs give the shapes recorded at export.
    """
    loaded = load(path, dataclasses.replace(settings or ModelSettings(), **shortcuts))
    model = loaded.model
    shape = input_shape or loaded.metadata.get("input_shape")
    if image_size is not None and input_shape is None and not isinstance(model, torch.export.ExportedProgram):
        shape = _image_shape(model, loaded.metadata.get("input_shape"), image_size)
        rows = _inspect_script(model, shape) if isinstance(model, torch.jit.ScriptModule) else \
            _inspect_module(model, shape, loaded.arch, layers)
        if not any(r.get("output_shape") for r in rows):
            raise InputError(f"the model does not run on an input of {'x'.join(map(str, shape))} per sample, so no "
                             "output shape is known", path=loaded.source, fix="check {image_size}")
        return rows
    if isinstance(model, torch.export.ExportedProgram):
        return _inspect_export(model)
    if isinstance(model, torch.jit.ScriptModule):
        return _inspect_script(model, shape)
    return _inspect_module(model, shape, loaded.arch, layers)


def _image_shape(model, metadata_shape, image_size: int) -> tuple[int, int, int]:
    """channels x image_size x image_size, the channels from the checkpoint's C x H x W input_shape, else the first
    Conv2d's input channels."""
    if isinstance(metadata_shape, (list, tuple)) and len(metadata_shape) == 3:
        return (int(metadata_shape[0]), image_size, image_size)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) or getattr(m, "original_name", "") == "Conv2d":
            try:
                return (int(m.in_channels), image_size, image_size)
            except (AttributeError, RuntimeError, TypeError, ValueError):
                break
    raise InputError("{image_size} needs an image model (a Conv2d layer, or a C x H x W input_shape in the "
                     "checkpoint's metadata); this model has neither", fix="leave {image_size} out")


def _params(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _guess_input_shapes(model: nn.Module, arch: str | None) -> list[tuple]:
    """Per-sample input shapes to try, from the first layer of each kind (convolutions first: a conv net may
    register its classifier before its body)."""
    first: dict[type, Any] = {}
    for m in model.modules():
        for kind in (nn.Conv2d, nn.Conv1d, nn.Conv3d, nn.Linear):
            if isinstance(m, kind):
                first.setdefault(kind, m)
    shapes: list[tuple[int, ...]] = []
    if nn.Conv2d in first:
        sizes = (224, 32) if arch and arch.startswith(("torchvision:", "timm:")) else (32, 224)
        shapes += [(first[nn.Conv2d].in_channels, s, s) for s in sizes]
    if nn.Conv1d in first:
        shapes.append((first[nn.Conv1d].in_channels, 128))
    if nn.Conv3d in first:
        shapes.append((first[nn.Conv3d].in_channels, 16, 32, 32))
    if nn.Linear in first:
        shapes.append((first[nn.Linear].in_features,))
    return shapes


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, torch.Tensor)), None)
    if isinstance(out, dict):
        return next((o for o in out.values() if isinstance(o, torch.Tensor)), None)
    return None


def _inspect_module(model: nn.Module, input_shape, arch, layers: str | None = None) -> list[dict]:
    names = {m: n for n, m in model.named_modules()}
    shapes: dict[str, Any] = {}
    order: list[str] = []

    def on_output(module, args, output):
        t = _first_tensor(output)
        if t is not None:
            shapes.setdefault(names[module], list(t.shape[1:]))

    def on_linear(module, args):
        order.append(names[module])

    candidates = [tuple(input_shape)] if input_shape else _guess_input_shapes(model, arch)
    for shape in candidates:
        handles = [m.register_forward_hook(on_output) for m in names]
        handles += [m.register_forward_pre_hook(on_linear) for m in names if isinstance(m, nn.Linear)]
        shapes.clear()
        order.clear()
        try:
            with torch.inference_mode():
                model(torch.zeros((2, *shape)))
            ok = True
        except Exception:  # noqa: BLE001 - a wrong guess of the input shape: try the next, else no shapes
            ok = False
        finally:
            for h in handles:
                h.remove()
        if ok:
            break
    else:
        shapes.clear()
        order.clear()
    if order:
        tap = order[-1]
    else:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        tap = linears[-1] if linears else ""
    chosen = set(select_layers(model, layers))
    if PENULTIMATE in chosen:
        chosen.add(tap)
    return [{"name": n, "type": type(m).__name__, "output_shape": shapes.get(n), "params": _params(m),
             "default_tap": n == tap, "layer_tap": n in chosen} for n, m in model.named_modules()]


def _inspect_script(model, input_shape) -> list[dict]:
    try:
        tap_module = ScriptTap(model, None).tap_module
    except InputError:
        tap_module = None
    root_shape = None
    for guess in [tuple(input_shape)] if input_shape else _guess_script_shapes(model):
        try:
            with torch.inference_mode():
                t = _first_tensor(model(torch.zeros((2, *guess))))
            root_shape = None if t is None else list(t.shape[1:])
            break
        except Exception:  # noqa: BLE001 - a wrong guess: try the next, else no shape
            continue
    rows = []
    for n, m in model.named_modules():
        kind = getattr(m, "original_name", type(m).__name__)
        shape: list | None = root_shape if n == "" else None
        if n == tap_module and hasattr(m, "weight"):
            shape = [int(m.weight.shape[0])]
        rows.append({"name": n, "type": kind, "output_shape": shape, "params": _params(m),
                     "default_tap": n == tap_module})
    return rows


def _guess_script_shapes(model) -> list[tuple]:
    """Input shapes to try for a TorchScript module, from the constants its first layers keep."""
    shapes: list[tuple[int, ...]] = []
    for _, m in model.named_modules():
        kind = getattr(m, "original_name", "")
        try:
            if kind == "Conv2d" and not any(len(s) == 3 for s in shapes):
                shapes += [(int(m.in_channels), 32, 32), (int(m.in_channels), 224, 224)]
            elif kind == "Linear" and not any(len(s) == 1 for s in shapes):
                shapes.append((int(m.in_features),))
        except (AttributeError, RuntimeError, TypeError, ValueError):
            continue
    return sorted(shapes, key=len, reverse=True)


def _inspect_export(program) -> list[dict]:
    try:
        tap_module = ExportTap(program, None).tap_module
    except InputError:
        tap_module = None
    types: dict[str, str] = {}
    shapes: dict[str, Any] = {}
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        val = node.meta.get("val")
        for path, kind in stack.values():
            p = clean_path(path)
            types.setdefault(p, kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", "?"))
            if node.op == "call_function" and hasattr(val, "shape"):
                shapes[p] = [int(s) if isinstance(s, int) else str(s) for s in val.shape[1:]]
    out = [n for n in program.graph.nodes if n.op == "output"]
    root_val = out[0].args[0][0] if out and out[0].args and out[0].args[0] else None
    if root_val is not None and hasattr(root_val, "meta") and hasattr(root_val.meta.get("val"), "shape"):
        shapes[""] = [int(s) if isinstance(s, int) else str(s) for s in root_val.meta["val"].shape[1:]]
    state = program.state_dict
    params = [k for k in program.graph_signature.parameters if k in state]
    types.setdefault("", "ExportedProgram")

    def count(prefix):
        return int(sum(state[k].numel() for k in params if not prefix or k.startswith(prefix + ".")))

    return [{"name": p, "type": types[p], "output_shape": shapes.get(p), "params": count(p),
             "default_tap": p == tap_module} for p in [""] + [p for p in types if p]]
