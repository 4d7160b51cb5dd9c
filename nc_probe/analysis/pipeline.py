"""Checkpoint -> Report: the public entry points of checkpoint analysis (``nc-probe analyze checkpoint.pt``).

The flow is one-way: :mod:`~nc_probe.load.checkpoint` (checkpoint -> model) and :mod:`~nc_probe.data.datasets` (spec ->
batches) feed :mod:`~nc_probe.extract.extraction` (model + batches -> ClassStats + FeatureStore), whose results go to
:func:`~nc_probe.analysis.features.analyze_store` (metrics -> Report). This module only wires them together.

- :func:`analyze_checkpoint` runs a checkpoint (or a model object) on its data and returns the Report;
- :func:`extract_features` returns the FeatureStore (features, labels, W, b) for notebook use.

Settings that the checkpoint's metadata (``{"nc_probe": {...}}``) can supply when the caller does not: arch,
arch_kwargs, data, split, class_names, image_size, mean, std, input_shape.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from nc_probe.analysis.features import analyze_store
from nc_probe.core import distributed
from nc_probe.core.devices import resolve_device, stats_device
from nc_probe.core.errors import InputError
from nc_probe.core.files import file_sha256
from nc_probe.core.progress import bar, phase, shows_progress
from nc_probe.core.settings import DataSettings, ModelSettings, Settings, checkpoint_settings
from nc_probe.data.batches import iter_batches
from nc_probe.data.datasets import DataSource, open_data
from nc_probe.data.preprocessing import model_preprocessing
from nc_probe.extract.extraction import BatchContext, Extraction, extract
from nc_probe.extract.model_state import restores_module
from nc_probe.extract.store import FeatureStore
from nc_probe.load.checkpoint import LoadedModel, load_model
from nc_probe.load.locate import resolve_input
from nc_probe.load.trust import check_file_data
from nc_probe.reports.report import Report
from nc_probe.taps import make_tap

__all__ = ["analyze_checkpoint", "extract_features", "load", "rank_share"]


def load(model_or_path, settings: ModelSettings | None = None) -> LoadedModel:
    """A checkpoint path (or ``sample:NAME``), a LoadedModel, an ``nn.Module`` or an ExportedProgram, ready to run."""
    if isinstance(model_or_path, (str, os.PathLike)):
        return load_model(resolve_input(model_or_path), settings)
    if isinstance(model_or_path, LoadedModel):
        return model_or_path
    if isinstance(model_or_path, (nn.Module, torch.export.ExportedProgram)):
        model = model_or_path.eval() if isinstance(model_or_path, nn.Module) else model_or_path
        return LoadedModel(model, "module", f"<{type(model_or_path).__name__}>")
    raise InputError(f"cannot load a model from a {type(model_or_path).__name__}",
                     fix="pass a checkpoint path, an nn.Module or an ExportedProgram")


def rank_share(store: FeatureStore) -> FeatureStore:
    """Under torchrun, an extracted store as this rank's share of the data: rank r ran every world-size-th sample
    from sample r (see :mod:`nc_probe.data.batches`). Outside torchrun, the store itself."""
    if not distributed.active():
        return store
    total = int(distributed.all_reduce_(torch.tensor([store.num_samples], dtype=torch.long)).item())
    return store.as_share(distributed.rank(), distributed.world_size(), total)


@shows_progress
@restores_module  # a live model given by a training loop: its mode, device, dtype and memory format put back
def analyze_checkpoint(path, settings: Settings | None = None, *, save_features=None, progress: bool = False,
                       **shortcuts) -> Report:
    """Load a checkpoint (or take an ``nn.Module`` / ExportedProgram), run it on data, and analyze the features.

    ``settings`` (a :class:`~nc_probe.core.settings.Settings`) or its fields as keywords: model (``arch``,
    ``arch_kwargs``, ``strip_prefix``, ``trust_checkpoint``), data (``data``: default the checkpoint's metadata,
    ``split``, ``limit``, ``data_classes``, ``image_size``, ``mean``, ``std``, ``class_map``), inference (``layer``,
    ``device``, ``batch_size``, ``workers``, ``amp``, ``spill_threshold``) and metrics (``eps2``, ``classes``, ...).
    ``save_features``: also write the features there, so later analyses need no model. ``progress``: what is being
    done, on stderr (a row per phase, a bar for the extraction; see :mod:`nc_probe.core.progress`).

    The report's ``inputs`` gain: source (the checkpoint), sha256 (of the checkpoint), data, split, layer, format,
    arch, features_file; its ``timings`` gain load_model, extraction and extraction_samples_per_s.
    """
    s = checkpoint_settings(settings, **shortcuts)
    t0 = time.perf_counter()
    with phase("loading the model"):
        loaded = load(path, s.model)
    t_load = time.perf_counter() - t0
    with ThreadPoolExecutor(1) as pool:
        sha = pool.submit(file_sha256, loaded.source) if os.path.exists(loaded.source) else None
        run = _run(loaded, s, save_features=save_features, sha=sha)
        digest = sha.result() if sha is not None else None
    ext = run.extraction
    inputs: dict[str, object] = {"source": loaded.source, "sha256": digest, "data": run.source.spec,
                                 "split": run.source.split,
              "layer": ext.layer, "format": loaded.format, "arch": loaded.arch,
              "features_file": None if save_features is None else str(save_features),
              "preprocessing": run.source.preprocessing}
    notes = list(loaded.notes) + list(run.source.notes)
    if notes:
        inputs["notes"] = notes
    # Under torchrun the extracted store already is this rank's share of the samples.
    store = rank_share(ext.store)
    try:
        with phase("metrics"):
            report = analyze_store(store, s.metrics, stats=ext.stats, device=str(stats_device(run.device)),
                                   layer=ext.layer, inputs=inputs, sha256=digest)
    finally:
        ext.cleanup()
    report.warnings[:0] = [*run.source.warnings, *ext.warnings]
    report.timings = {"load_model": t_load, "extraction": ext.seconds,
                      "extraction_samples_per_s": ext.samples_per_s, **report.timings}
    e = s.extraction
    report.settings.update({"device": str(run.device), "amp": e.amp, "batch_size": e.batch_size,
                            "workers": e.workers})
    return report


@shows_progress
@restores_module
def extract_features(model_or_path, data=None, settings: Settings | None = None, *, save_features=None,
                     progress: bool = False, **shortcuts) -> FeatureStore:
    """The tapped features of a model on some data, as a FeatureStore (``store.read("features")``,
    ``store.labels()``, ``store.W``, ``store.b``), for notebooks.

    ``model_or_path``: a checkpoint path, an ``nn.Module`` or an ExportedProgram. ``data``: a data spec string, a
    Dataset, a DataLoader or an ``(x, y)`` pair (default: the checkpoint's metadata). Other settings as in
    :func:`analyze_checkpoint`. Pass the store to :func:`nc_probe.analyze_store`, or write it with ``save_features``.
    """
    s = checkpoint_settings(settings, **shortcuts)
    if data is not None:
        s = s.with_(data=data)
    s = s.with_(classes=[])  # no subspace statistics: only the features are wanted
    with phase("loading the model"):
        loaded = load(model_or_path, s.model)
    return _run(loaded, s, save_features=save_features).extraction.store


@dataclass
class _RunResult:
    extraction: Extraction
    source: DataSource
    device: torch.device


def _run(loaded: LoadedModel, s: Settings, *, save_features, sha: Future | None = None) -> _RunResult:
    if save_features is not None and distributed.active():
        raise InputError("{save_features} under torchrun would keep only one process's share of the samples",
                         path=save_features, fix="extract the features once in a single process")
    with phase("opening the data"):
        source = open_source(loaded, s.data, s.model.trust_checkpoint)
    dev = resolve_device(s.extraction.device)
    tap = make_tap(loaded.model, layer=s.extraction.layer)
    tap.to(dev, channels_last=True)

    def metadata() -> dict:  # asked once extraction is over: the checksum has had time to finish
        info = {"source": loaded.source, "data": source.spec, "split": source.split, "format": loaded.format,
                "arch": loaded.arch, "device": str(dev), "amp": s.extraction.amp,
                "batch_size": s.extraction.batch_size, "sha256": sha.result() if sha is not None else None,
                "layer": tap.layer, "num_outputs": tap.num_outputs}
        return {k: v for k, v in info.items() if v is not None}

    try:
        with batches_of(loaded, source, s, dev, metadata) as (batches, context):
            ext = extract(tap, batches, device=dev, context=context, settings=s.extraction, metrics=s.metrics,
                          save_features=save_features)
    finally:
        tap.close()
    return _RunResult(ext, source, dev)


@contextlib.contextmanager
def batches_of(loaded: LoadedModel, source: DataSource, s: Settings, dev, metadata
               ) -> Iterator[tuple[Iterator, BatchContext]]:
    """The batches of ``source`` and the BatchContext an extraction reads them with (``metadata``: a dict, or a
    function asked once extraction is over), with a progress bar when the progress display is open (see
    :mod:`nc_probe.core.progress`), closed at the end."""
    total = source.rows if source.rows is not None else (len(source) if source.sized else None)
    extracting = bar(total, f"extracting: {os.path.basename(loaded.source)} on {source.spec}")
    context = BatchContext(source=loaded.source, declared_classes=source.num_classes,
                           data_name=source.spec if source.split is None else f"{source.spec} ({source.split})",
                           class_names=source.class_names, metadata=metadata, progress=extracting, total=total)
    try:
        yield iter_batches(source, batch_size=s.extraction.batch_size, workers=s.extraction.workers,
                           pin_memory=dev.type == "cuda"), context
    finally:
        if extracting is not None:
            extracting.close()


def open_source(loaded: LoadedModel, data: DataSettings, trust: bool) -> DataSource:
    """The data to run on: the caller's settings, filled in from the checkpoint's metadata; images are prepared as
    the model's own preprocessing says (:mod:`nc_probe.data.preprocessing`), the caller's image_size/mean/std over
    it."""
    meta = loaded.metadata
    spec, split = _data_spec(loaded, data.data, data.split, trust)
    if meta.get("hf_task") in ("causal-lm", "sequence-classifier"):
        return _token_source(loaded, spec, split, data)
    return open_data(spec, split=split, limit=data.limit, classes=data.data_classes, image_size=data.image_size,
                     mean=data.mean, std=data.std, channels=_input_channels(loaded.model),
                     class_names=meta.get("class_names"), class_map=data.class_map,
                     preprocessing=model_preprocessing(loaded))


def _token_source(loaded: LoadedModel, spec, split, data: DataSettings) -> DataSource:
    """Token ids for a text model (:mod:`nc_probe.data.token_data`): arrays, or text tokenized by the folder's
    tokenizer."""
    from pathlib import Path

    from nc_probe.data.token_data import open_tokens

    if not isinstance(spec, str):
        raise InputError("a text model's data is a file of token ids or text", path=loaded.source,
                         fix="pass {data} as .npz/.pt input_ids (N, T), or .txt/.jsonl text")
    if spec.startswith("sample:"):
        from nc_probe.load.samples import sample_data_path

        try:
            spec = str(sample_data_path(spec))
        except FileNotFoundError as e:
            raise InputError(str(e), path=loaded.source, fix="pass {data}") from None
    for name in ("data_classes", "class_map", "image_size", "mean", "std"):
        if getattr(data, name) is not None:
            raise InputError(f"{{{name}}} does not apply to a text model's token data", path=loaded.source,
                             fix=f"leave {{{name}}} out")
    meta = loaded.metadata
    causal = meta["hf_task"] == "causal-lm"
    ds, split, notes = open_tokens(spec, split=split, causal=causal, vocab_size=meta.get("hf_vocab_size"),
                                   folder=Path(meta["hf_folder"]), seq_len=data.seq_len, limit=data.limit)
    names = meta.get("class_names")
    return DataSource(spec=spec, split=split, dataset=ds, targets=ds.targets, class_names=None if causal else names,
                      num_classes=None, notes=notes, rows=ds.rows)


def _input_channels(model) -> int:
    if isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                return 1 if m.in_channels == 1 else 3
    return 3


def _data_spec(loaded: LoadedModel, data, split, trust: bool):
    """The data spec and split: the caller's, else the checkpoint's (allowlisted, or trusted: see
    nc_probe.load.trust)."""
    meta = loaded.metadata
    if data is not None:
        same = isinstance(data, str) and data == meta.get("data")
        return data, split if split is not None else (meta.get("split") if same else None)
    spec = meta.get("data")
    if not spec:
        raise InputError("has no data to run on (no {data}, and its metadata names none)", path=loaded.source,
                         fix="pass {data}: sample:digits, arrays.npz (x, y), an image folder, torchvision:CLASS:ROOT "
                             "or package.module:function")
    if not trust:
        check_file_data(spec, path=loaded.source)
    meta_split = meta.get("split")
    return spec, split if split is not None else (meta_split if isinstance(meta_split, str) else None)

