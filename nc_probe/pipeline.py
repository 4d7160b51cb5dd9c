"""Checkpoint -> Report: the public entry points of checkpoint analysis (``nc-probe analyze checkpoint.pt``).

The flow is one-way: :mod:`~nc_probe.loading` (checkpoint -> model) and :mod:`~nc_probe.datasets` (spec ->
batches) feed :mod:`~nc_probe.extraction` (model + batches -> ClassStats + FeatureStore), whose results go to
:func:`~nc_probe.analysis.analyze_store` (metrics -> Report). This module only wires them together.

- :func:`analyze_checkpoint` runs a checkpoint (or a model object) on its data and returns the Report;
- :func:`extract_features` returns the FeatureStore (features, labels, W, b) for notebook use;
- :func:`inspect_checkpoint` lists the modules, output shapes, parameter counts and the default tap;
- :func:`is_checkpoint` tells a model file from a feature file.

Settings that the checkpoint's metadata (``{"nc_probe": {...}}``) can supply when the caller does not: arch,
arch_kwargs, data, split, class_names, image_size, mean, std, input_shape.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from . import distributed
from .analysis import analyze_store
from .datasets import iter_batches, open_data
from .errors import InputError
from .extraction import Extraction, extract, make_tap, resolve_device, stats_device
from .loading import LoadedModel, file_sha256, is_checkpoint, load_model
from .locate import resolve_input
from .report import Report
from .stats import GiB
from .store import FeatureStore
from .trust import check_file_data

__all__ = ["analyze_checkpoint", "extract_features", "inspect_checkpoint", "is_checkpoint", "load_model"]

ANALYSIS_SETTINGS = ("eps2", "rank_tol", "subspace_dim", "classes", "memory_budget", "chunk_rows")


def _load(model_or_path, arch, arch_kwargs, strip_prefix, trust_checkpoint) -> LoadedModel:
    if isinstance(model_or_path, (str, os.PathLike)):
        return load_model(resolve_input(model_or_path), arch=arch, arch_kwargs=arch_kwargs, strip_prefix=strip_prefix,
                          trust_checkpoint=trust_checkpoint)
    if isinstance(model_or_path, LoadedModel):
        return model_or_path
    if isinstance(model_or_path, (nn.Module, torch.export.ExportedProgram)):
        model = model_or_path.eval() if isinstance(model_or_path, nn.Module) else model_or_path
        return LoadedModel(model, "module", f"<{type(model_or_path).__name__}>")
    raise InputError(f"cannot load a model from a {type(model_or_path).__name__}",
                     fix="pass a checkpoint path, an nn.Module or an ExportedProgram")


def _input_channels(model) -> int:
    if isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                return 1 if m.in_channels == 1 else 3
    return 3


def _data_spec(loaded: LoadedModel, data, split, trust: bool):
    """The data spec and split: the caller's, else the checkpoint's (allowlisted, or trusted: see nc_probe.trust)."""
    meta = loaded.metadata
    if data is not None:
        same = isinstance(data, str) and data == meta.get("data")
        return data, split if split is not None else (meta.get("split") if same else None)
    spec = meta.get("data")
    if not spec:
        raise InputError("has no data to run on (no --data, and its metadata names none)", path=loaded.source,
                         fix="pass --data: sample:digits, arrays.npz (x, y), an image folder, torchvision:CLASS:ROOT "
                             "or package.module:function")
    if not trust:
        check_file_data(spec, path=loaded.source)
    meta_split = meta.get("split")
    return spec, split if split is not None else (meta_split if isinstance(meta_split, str) else None)


class _Progress:
    """A rich progress bar on stderr with samples/s; a callable ``(done, total)``."""

    def __init__(self, total: int | None, description: str):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} samples/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task(description, total=total or None, rate="-")
        self.t0 = time.perf_counter()
        self.bar.start()

    def __call__(self, done: int, total: int | None) -> None:
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.task, completed=done, rate=f"{rate:,.0f}")

    def close(self) -> None:
        self.bar.stop()


def _run(loaded: LoadedModel, *, data, split, limit, data_classes, image_size, mean, std, class_map, layer, device,
         batch_size, workers, amp, save_features, progress, trust_checkpoint, subspace_classes, memory_budget,
         sha_future=None) -> tuple[Extraction, dict]:
    meta = loaded.metadata
    if save_features is not None and distributed.active():
        raise InputError("--save-features under torchrun would keep only one process's share of the samples",
                         path=save_features, fix="extract the features once in a single process")
    progress = progress and distributed.is_main()
    spec, split = _data_spec(loaded, data, split, trust_checkpoint)
    source = open_data(spec, split=split, limit=limit, classes=data_classes,
                       image_size=image_size if image_size is not None else meta.get("image_size"),
                       mean=mean if mean is not None else meta.get("mean"),
                       std=std if std is not None else meta.get("std"),
                       channels=_input_channels(loaded.model), class_names=meta.get("class_names"),
                       class_map=class_map)
    dev = resolve_device(device)
    tap = make_tap(loaded.model, layer=layer)
    tap.to(dev, channels_last=True)
    info = {"source": loaded.source, "data": source.spec, "split": source.split, "format": loaded.format,
            "arch": loaded.arch, "device": str(dev), "amp": amp, "batch_size": batch_size}

    def metadata():
        info["sha256"] = sha_future.result() if sha_future is not None else None
        info["layer"] = tap.layer
        return {k: v for k, v in info.items() if v is not None}

    bar = _Progress(len(source) if source.sized else None, f"{os.path.basename(loaded.source)} on {source.spec}") \
        if progress else None
    try:
        batches = iter_batches(source, batch_size=batch_size, workers=workers, pin_memory=dev.type == "cuda")
        ext = extract(tap, batches, device=dev, amp=amp, declared_classes=source.num_classes,
                      subspace_classes=subspace_classes, memory_budget=memory_budget, save_features=save_features,
                      class_names=source.class_names, metadata=metadata, source=loaded.source,
                      data_name=source.spec if source.split is None else f"{source.spec} ({source.split})",
                      progress=bar, total=len(source) if source.sized else None)
    finally:
        if bar is not None:
            bar.close()
        tap.close()
    info["layer"] = ext.layer
    info["notes"] = list(loaded.notes) + list(source.notes)
    return ext, info


def analyze_checkpoint(path, *, arch: str | None = None, arch_kwargs: dict | None = None,
                       strip_prefix: str | None = None, trust_checkpoint: bool = False, data=None,
                       split: str | None = None, limit: int | None = None, data_classes=None,
                       image_size: int | None = None, mean=None, std=None, class_map=None,
                       layer: str | None = None, device: str = "auto", batch_size: int = 256, workers: int = 0, amp: str = "off",
                       save_features=None, progress: bool = False, **settings) -> Report:
    """Load a checkpoint (or take an ``nn.Module`` / ExportedProgram), run it on data, and analyze the features.

    Model: ``arch``, ``arch_kwargs``, ``strip_prefix``, ``trust_checkpoint`` (see :func:`nc_probe.loading.load_model`).
    Data: ``data`` spec (default: the checkpoint's metadata; see :func:`nc_probe.datasets.open_data`), ``split``,
    ``limit`` (N samples, evenly spaced), ``data_classes`` (keep only these classes), ``image_size``, ``mean``, ``std``,
    ``class_map`` (image folders: folder name -> the classifier's class index; see
    :func:`nc_probe.datasets.open_data`).
    Inference: ``layer`` (default: the input of the final nn.Linear), ``device`` (auto|cpu|cuda|mps), ``batch_size``,
    ``workers``, ``amp`` (bf16|fp16|off), ``save_features`` (also write the features there, so later analyses need
    no model), ``progress`` (a progress bar on stderr). ``settings`` go to :func:`~nc_probe.analysis.analyze_store`
    (eps2, rank_tol, subspace_dim, classes, memory_budget).

    The report's ``inputs`` gain: source (the checkpoint), sha256 (of the checkpoint), data, split, layer, format,
    arch, features_file; its ``timings`` gain load_model, extraction and extraction_samples_per_s.
    """
    unknown = set(settings) - set(ANALYSIS_SETTINGS)
    if unknown:
        raise TypeError(f"analyze_checkpoint() got unexpected keyword arguments {sorted(unknown)}")
    t0 = time.perf_counter()
    loaded = _load(path, arch, arch_kwargs, strip_prefix, trust_checkpoint)
    t_load = time.perf_counter() - t0
    with ThreadPoolExecutor(1) as pool:
        sha = pool.submit(file_sha256, loaded.source) if os.path.isfile(loaded.source) else None
        ext, info = _run(loaded, data=data, split=split, limit=limit, data_classes=data_classes,
                         image_size=image_size, mean=mean, std=std, class_map=class_map, layer=layer, device=device,
                         batch_size=batch_size, workers=workers, amp=amp, save_features=save_features,
                         progress=progress, trust_checkpoint=trust_checkpoint,
                         subspace_classes=settings.get("classes"),
                         memory_budget=settings.get("memory_budget", 2 * GiB), sha_future=sha)
        digest = sha.result() if sha is not None else None
    inputs = {"source": loaded.source, "sha256": digest, "data": info["data"], "split": info["split"],
              "layer": ext.layer, "format": info["format"], "arch": info["arch"],
              "features_file": None if save_features is None else str(save_features)}
    if info["notes"]:
        inputs["notes"] = info["notes"]
    # The analysis would hash the store's source (the checkpoint, or the features file) again; the checkpoint's
    # digest is already known and is the one the report records.
    ext.store.sha256 = lambda: digest
    # Under torchrun the extracted store already is this rank's share of the samples.
    store = ext.store.shard(0, ext.store.num_samples) if distributed.active() else ext.store
    try:
        report = analyze_store(store, stats=ext.stats, device=str(stats_device(resolve_device(device))),
                               layer=ext.layer, inputs=inputs, **settings)
    finally:
        ext.cleanup()
    report.warnings[:0] = ext.warnings
    report.timings = {"load_model": t_load, "extraction": ext.seconds,
                      "extraction_samples_per_s": ext.samples_per_s, **report.timings}
    report.settings.update({"device": info["device"], "amp": amp, "batch_size": batch_size, "workers": workers})
    return report


def extract_features(model_or_path, data=None, *, arch: str | None = None, arch_kwargs: dict | None = None,
                     strip_prefix: str | None = None, trust_checkpoint: bool = False, split: str | None = None,
                     limit: int | None = None, data_classes=None, image_size: int | None = None, mean=None,
                     std=None, class_map=None, layer: str | None = None, device: str = "auto", batch_size: int = 256,
                     workers: int = 0, amp: str = "off", save_features=None, progress: bool = False) -> FeatureStore:
    """The tapped features of a model on some data, as a FeatureStore (``store.read("features")``,
    ``store.labels()``, ``store.W``, ``store.b``), for notebooks.

    ``model_or_path``: a checkpoint path, an ``nn.Module`` or an ExportedProgram. ``data``: a data spec string, a
    Dataset, a DataLoader or an ``(x, y)`` pair (default: the checkpoint's metadata). Other arguments as in
    :func:`analyze_checkpoint`. Pass the store to :func:`nc_probe.analyze_store`, or write it with ``save_features``.
    """
    loaded = _load(model_or_path, arch, arch_kwargs, strip_prefix, trust_checkpoint)
    with ThreadPoolExecutor(1) as pool:
        sha = pool.submit(file_sha256, loaded.source) if os.path.isfile(loaded.source) else None
        ext, _ = _run(loaded, data=data, split=split, limit=limit, data_classes=data_classes, image_size=image_size,
                      mean=mean, std=std, class_map=class_map, layer=layer, device=device, batch_size=batch_size,
                      workers=workers, amp=amp, save_features=save_features, progress=progress, trust_checkpoint=trust_checkpoint,
                      subspace_classes=[], memory_budget=2 * GiB, sha_future=sha)
    return ext.store


# ---------------------------------------------------------------------------------------------- inspect
def inspect_checkpoint(path, *, arch: str | None = None, arch_kwargs: dict | None = None,
                       strip_prefix: str | None = None, trust_checkpoint: bool = False,
                       input_shape=None) -> list[dict]:
    """One row per module: ``name`` ("" for the whole model), ``type``, ``output_shape`` (per sample, without the
    batch dimension; None when unknown), ``params`` (including sub-modules) and ``default_tap`` (True on the
    nn.Linear whose input analyze taps by default).

    Output shapes come from one forward pass of a zero batch of ``input_shape`` (per sample; default: the
    checkpoint's metadata ``input_shape``, else guessed from the first layer). TorchScript archives give only the
    model's output shape and the default tap's; torch.export programs give the shapes recorded at export.
    """
    loaded = _load(path, arch, arch_kwargs, strip_prefix, trust_checkpoint)
    model = loaded.model
    shape = input_shape or loaded.metadata.get("input_shape")
    if isinstance(model, torch.export.ExportedProgram):
        return _inspect_export(model)
    if isinstance(model, torch.jit.ScriptModule):
        return _inspect_script(model, shape)
    return _inspect_module(model, shape, loaded.arch)


def _params(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _guess_input_shapes(model: nn.Module, arch: str | None) -> list[tuple]:
    """Per-sample input shapes to try, from the first layer of each kind (convolutions first: a conv net may
    register its classifier before its body)."""
    first = {}
    for m in model.modules():
        for kind in (nn.Conv2d, nn.Conv1d, nn.Conv3d, nn.Linear):
            if isinstance(m, kind):
                first.setdefault(kind, m)
    shapes = []
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


def _inspect_module(model: nn.Module, input_shape, arch) -> list[dict]:
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
        tap = linears[-1] if linears else None
    return [{"name": n, "type": type(m).__name__, "output_shape": shapes.get(n), "params": _params(m),
             "default_tap": n == tap} for n, m in model.named_modules()]


def _inspect_script(model, input_shape) -> list[dict]:
    from .extraction import ScriptTap

    try:
        tap_module = ScriptTap(model, None).tap_module
    except InputError:
        tap_module = None
    root_shape = None
    for shape in [tuple(input_shape)] if input_shape else _guess_script_shapes(model):
        try:
            with torch.inference_mode():
                t = _first_tensor(model(torch.zeros((2, *shape))))
            root_shape = None if t is None else list(t.shape[1:])
            break
        except Exception:  # noqa: BLE001 - a wrong guess: try the next, else no shape
            continue
    rows = []
    for n, m in model.named_modules():
        kind = getattr(m, "original_name", type(m).__name__)
        shape = root_shape if n == "" else None
        if n == tap_module and hasattr(m, "weight"):
            shape = [int(m.weight.shape[0])]
        rows.append({"name": n, "type": kind, "output_shape": shape, "params": _params(m),
                     "default_tap": n == tap_module})
    return rows


def _guess_script_shapes(model) -> list[tuple]:
    """Input shapes to try for a TorchScript module, from the constants its first layers keep."""
    shapes = []
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
    from .extraction import ExportTap, _clean_path

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
            p = _clean_path(path)
            types.setdefault(p, kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", "?"))
            if node.op == "call_function" and hasattr(val, "shape"):
                shapes[p] = [int(s) if isinstance(s, int) else str(s) for s in val.shape[1:]]
    out = [n for n in program.graph.nodes if n.op == "output"]
    root_val = out[0].args[0][0] if out and out[0].args and out[0].args[0] else None
    if hasattr(root_val, "meta") and hasattr(root_val.meta.get("val"), "shape"):
        shapes[""] = [int(s) if isinstance(s, int) else str(s) for s in root_val.meta["val"].shape[1:]]
    state = program.state_dict
    params = [k for k in program.graph_signature.parameters if k in state]
    types.setdefault("", "ExportedProgram")

    def count(prefix):
        return int(sum(state[k].numel() for k in params if not prefix or k.startswith(prefix + ".")))

    return [{"name": p, "type": types[p], "output_shape": shapes.get(p), "params": count(p),
             "default_tap": p == tap_module} for p in [""] + [p for p in types if p]]
