"""Checkpoint -> LayerReport: every selected layer of a model from one forward pass per batch
(``nc-probe layers CHECKPOINT``).

The flow is the single-layer one, widened: :mod:`~nc_probe.load.checkpoint` and :mod:`~nc_probe.data.datasets` feed
:func:`~nc_probe.extract.extraction.extract_layers` (a FeatureStore per layer, spilled to temporary files past the spill
threshold), and each layer's store goes through :func:`~nc_probe.analysis.features.analyze_store` with the linear probe
on, one layer at a time, so each gets the whole memory budget and the same exactness as ``analyze``.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nc_probe.analysis.features import analyze_store
from nc_probe.analysis.pipeline import batches_of, load, open_source, rank_share
from nc_probe.core import distributed
from nc_probe.core.devices import resolve_device, stats_device
from nc_probe.core.files import file_sha256
from nc_probe.core.progress import phase, shows_progress
from nc_probe.core.settings import Settings, checkpoint_settings
from nc_probe.extract.extraction import Extraction, extract_layers
from nc_probe.reports.layer_report import LayerReport
from nc_probe.taps.layers import LayerTaps, require_eager
from nc_probe.taps.select import DEFAULT_LAYERS, PENULTIMATE, select_layers

__all__ = ["analyze_layers"]


@shows_progress
def analyze_layers(path, settings: Settings | None = None, *, progress: bool = False, **shortcuts) -> LayerReport:
    """Load a checkpoint (or take an ``nn.Module``), run it once over its data with a tap on every selected layer,
    and analyze each layer's features.

    ``settings`` or its fields as keywords, as :func:`nc_probe.analyze_checkpoint` takes them, plus ``layers``
    (default ``"@blocks,@penultimate"``), ``pool`` and ``max_dim``. Every layer's metrics include
    ``acc_linear_probe``; the report fits the depth law of ``D_l`` and finds where accuracy stops improving.
    """
    s = checkpoint_settings(settings, **shortcuts)
    s = s.with_(linear_probe=True)
    t0 = time.perf_counter()
    with phase("loading the model"):
        loaded = load(path, s.model)
    require_eager(loaded.model, loaded.source)  # before anything reads the model's modules or opens the data
    t_load = time.perf_counter() - t0
    with ThreadPoolExecutor(1) as pool:
        sha = pool.submit(file_sha256, loaded.source) if os.path.exists(loaded.source) else None
        with phase("opening the data"):
            source = open_source(loaded, s.data, s.model.trust_checkpoint)
        dev = resolve_device(s.extraction.device)
        names = select_layers(loaded.model, s.extraction.layers)
        with LayerTaps(loaded.model, names, pool=s.extraction.pool, max_dim=s.extraction.max_dim) as taps:
            taps.to(dev)
            exts = _extract(taps, loaded, source, s, dev)
        digest = sha.result() if sha is not None else None
    infos = {n: taps.infos[n].to_dict() for n in exts}
    notes = _drop_duplicate_penultimate(exts, infos, taps)
    if s.extraction.layers is None:
        notes = []  # the default selection: the user asked for no @penultimate, so its merging is no news to them
    t_extract = next(iter(exts.values())).seconds if exts else 0.0
    t1 = time.perf_counter()
    reports, cka, cka_note = _layer_reports(exts, infos, s, str(stats_device(dev)), digest)
    first = reports[0][1] if reports else None
    inputs = {"source": loaded.source, "sha256": digest, "data": source.spec, "split": source.split,
              "arch": loaded.arch, "format": loaded.format, "layers": s.extraction.layers or DEFAULT_LAYERS,
              "pool": s.extraction.pool, "max_dim": s.extraction.max_dim, "head": taps.head_name(),
              "num_samples": None if first is None else first.inputs["num_samples"],
              "num_classes": None if first is None else first.inputs["num_classes"],
              "class_names": None if first is None else first.inputs["class_names"],
              "preprocessing": source.preprocessing}
    settings_record = {} if first is None else dict(first.settings)
    settings_record.update({"device": str(dev), "batch_size": s.extraction.batch_size, "amp": s.extraction.amp})
    out = LayerReport.from_reports(reports, inputs, settings_record)
    out.cka = cka
    out.warnings = list(source.warnings) + list(loaded.notes) + list(source.notes) + notes + (
        [cka_note] if cka_note else [])
    out.timings = {"load_model": t_load, "extraction": t_extract, "analysis": time.perf_counter() - t1,
                   "total": time.perf_counter() - t0}
    return out


def _layer_reports(exts: dict[str, Extraction], infos: dict, s: Settings, device: str, digest: str | None
                   ) -> tuple[list, dict | None, str | None]:
    """The CKA between layers, then each layer's (info, report), one layer at a time so that each gets the whole
    memory budget; every layer's store is removed, whatever happens."""
    reports = []
    try:
        with phase("CKA between layers"):
            cka, cka_note = _layer_cka(exts, s.metrics.memory_budget)
        for i, name in enumerate(list(exts)):
            ext = exts[name]
            with phase(f"layer {i + 1}/{len(exts)}: {name}"):
                report = analyze_store(rank_share(ext.store), s.metrics, device=device, layer=name, sha256=digest)
            report.warnings[:0] = ext.warnings
            reports.append((infos[name], report))
            ext.cleanup()
    finally:
        for ext in exts.values():
            ext.cleanup()
    return reports, cka, cka_note


def _layer_cka(exts: dict[str, Extraction], memory_budget: int) -> tuple[dict | None, str | None]:
    """Linear CKA between every pair of layers (Kornblith et al. 2019's layer-by-layer heatmap), streamed over the
    layers' stores, when the cross products (``(sum_l d_l)^2`` float64 numbers) fit a quarter of the memory budget
    and all samples are in this process."""
    from nc_probe.core.text import format_bytes
    from nc_probe.metrics.cka import cka_matrix

    if len(exts) < 2 or distributed.active():
        return None, None
    need = 8 * sum(e.store.dim for e in exts.values()) ** 2
    if need > memory_budget // 4:
        return None, (f"no CKA between layers: its cross products need {format_bytes(need)}, more than a quarter of "
                      "{memory_budget}; select fewer {layers} or lower {max_dim}")
    m = cka_matrix([e.store for e in exts.values()])
    return {"layers": list(exts), "matrix": [[None if not np.isfinite(v) else float(v) for v in row] for row in m]}, \
        None


def _extract(taps: LayerTaps, loaded, source, s: Settings, dev) -> dict[str, Extraction]:
    """Every layer's features, keyed in forward order (the order the hooks fired on the first batch)."""
    with batches_of(loaded, source, s, dev, {"source": loaded.source, "data": source.spec}) \
            as (batches, context):
        exts = extract_layers(taps, batches, device=dev, context=context, settings=s.extraction, metrics=s.metrics)
    return {n: exts[n] for n in taps.forward_order() if n in exts}


def _drop_duplicate_penultimate(exts: dict[str, Extraction], infos: dict, taps: LayerTaps) -> list[str]:
    """When the last selected module's features are the head's input itself (a ReLU feeding the classifier, a
    ResNet's last block after pooling), keep that module and give it the classifier: one layer, not two."""
    if PENULTIMATE not in exts or len(exts) < 2:
        return []
    names = list(exts)
    last = names[names.index(PENULTIMATE) - 1] if names.index(PENULTIMATE) > 0 else None
    if last is None:
        return []
    a, b = exts[last].store, exts[PENULTIMATE].store
    if a.dim != b.dim or a.num_samples != b.num_samples:
        return []
    step = 1 << 16
    for start in range(0, a.num_samples, step):
        stop = min(start + step, a.num_samples)
        if not np.array_equal(a.read("features", start, stop), b.read("features", start, stop)):
            return []
    a.W, a.b = taps.W, taps.b
    infos[last]["head_input"] = True
    exts.pop(PENULTIMATE).cleanup()
    return [f"@penultimate (the input of the classifier {taps.head_name()}) is the output of {last}: analysed "
            "once, under that name, with the classifier"]
