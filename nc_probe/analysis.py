"""From a FeatureStore to a Report (``docs/metrics.md`` defines every metric).

Pass 1 accumulates :class:`~nc_probe.stats.ClassStats`; the collapse and subspace metrics are computed from them
(:mod:`nc_probe.compute`); pass 2 (:mod:`nc_probe.pass2`) counts NC4 and the accuracies against the final class
means. The subspace metrics need only pass 1, so they run on a thread while pass 2 reads the features again.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from . import compute, distributed
from ._version import __version__
from .errors import InputError
from .pass2 import second_pass
from .pca import PCASample
from .report import Report
from .settings import MetricSettings, metric_settings
from .stats import ClassStats, check_memory
from .store import FeatureStore, open_store


def auto_chunk_rows(dim: int) -> int:
    """Rows per chunk so that one float64 chunk would be about 256 MiB (the CPU path never makes one: it holds the
    chunk as read, 128 MiB of float32, and works on cache-sized blocks of it). Large, so that each class has many
    rows per chunk for its d x d syrk (at C=100, d=512: ~650 rows instead of ~160, about 1.4x faster), the Chan
    merge (C x d x d) is negligible, and still flat in N. At most 2^20 rows, so that the per-row int64 label and
    order arrays stay small when d is small."""
    return max(256, min(1 << 20, (256 << 20) // (8 * max(dim, 1))))


def analyze_features(features, labels, W=None, b=None, *, logits=None, class_names=None,
                     settings: MetricSettings | None = None, device="cpu", **shortcuts) -> Report:
    """Analyze in-memory features (numpy arrays or torch tensors): ``features`` (N, d), ``labels`` (N,).

    ``W`` (C, d) and ``b`` (C,) are the final linear classifier (NC2-W, NC3, NC4 and acc_model need it; stored
    ``logits`` give acc_model without it). ``settings`` (or its fields as keywords): see :class:`MetricSettings`.
    """
    store = FeatureStore.from_arrays(features, labels, logits=logits, W=W, b=b, class_names=class_names)
    return analyze_store(store, settings, device=device, **shortcuts)


def analyze_file(path, settings: MetricSettings | None = None, *, device="cpu", **shortcuts) -> Report:
    """Analyze a feature file (nc-probe/safetensors, ``.npz`` or ``.pt``); settings as in :func:`analyze_store`."""
    return analyze_store(open_store(path), settings, device=device, **shortcuts)


def analyze_store(store: FeatureStore, settings: MetricSettings | None = None, *, device="cpu",
                  stats: ClassStats | None = None, layer: str | None = None, inputs: dict | None = None,
                  sha256: str | None = None, **shortcuts) -> Report:
    """Compute every metric for ``store``.

    ``settings`` (or its fields as keywords: ``eps2=1.0``): see :class:`~nc_probe.settings.MetricSettings`.
    ``device``: where the statistics are accumulated ("cpu", "cuda", ...). ``stats``: statistics already accumulated
    over exactly this store's rows (e.g. during extraction); pass 1 is then skipped and their tracked classes decide
    the subspace metrics. ``layer``, ``inputs``: recorded in the report. ``sha256``: the digest to record (default:
    the store file's).
    """
    settings = metric_settings(settings, **shortcuts)
    if settings.subspace_dim is not None and settings.subspace_dim > store.dim:
        raise InputError(f"{{subspace_dim}} {settings.subspace_dim} is outside 1..d={store.dim}",
                         fix=f"pick k between 1 and {store.dim}")
    t_start = time.perf_counter()
    if distributed.active() and not store.is_shard:
        store = store.shard(*distributed.row_range(store.num_samples))
    num_classes = distributed.all_reduce_max(_num_classes(store, store.labels()))
    rows = settings.chunk_rows or auto_chunk_rows(store.dim)
    stats, budget_warning = _prepare_stats(stats, num_classes, store.dim, settings, device)
    timings = {}
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(store.sha256) if sha256 is None else None
        if stats.total == 0:
            _pass1(store, stats, rows)
        stats.all_reduce()  # under torchrun each rank holds its shard's statistics (given or just accumulated)
        timings["pass1_stats"] = time.perf_counter() - t_start
        t = time.perf_counter()
        W = None if store.W is None else np.asarray(store.W, dtype=np.float64)
        c = compute.collapse_metrics(stats, W, source=store.source)
        timings["collapse_metrics"] = time.perf_counter() - t
        count = stats.count.cpu().numpy()
        subspace_job = pool.submit(_timed, compute.subspace_metrics, stats, count, settings)
        t = time.perf_counter()
        pca = PCASample(stats, c.ids, store.num_samples)
        tally = second_pass(store, stats, c.ids, W, rows, pca)
        timings["pass2_nc4"] = time.perf_counter() - t
        (sub, sub_lists, angles, sub_warnings), timings["subspace_metrics"] = subspace_job.result()
        sha = digest.result() if digest is not None else sha256
    timings["total"] = time.perf_counter() - t_start
    metrics = {**c.metrics, **compute.prediction_metrics(tally, int(c.n.sum())), **sub}
    data_warnings, empty = compute.data_warnings(stats, c.ids)
    warnings = [w for w in [budget_warning] if w] + sub_warnings + data_warnings
    report_inputs = _inputs(store, stats, c, sha, num_classes, layer, empty, W is not None)
    return Report(inputs={**report_inputs, **(inputs or {})}, metrics=metrics,
                  settings=compute.settings_record(settings, stats, rows) | {"device": str(device)},
                  per_class=compute.per_class_table(stats, c, tally, pca.result(), sub_lists), angles=angles,
                  timings=timings, warnings=warnings)


def _prepare_stats(stats, num_classes: int, dim: int, settings: MetricSettings, device):
    """The statistics to fill (or the ones given, checked), and the memory-budget warning."""
    if stats is None:
        tracked, warning = check_memory(num_classes, dim, settings.classes, settings.memory_budget)
        return ClassStats(num_classes, dim, subspace_classes=tracked, device=device,
                          backend=settings.backend), warning
    if (stats.num_classes, stats.dim) != (num_classes, dim):
        raise ValueError(f"stats of C={stats.num_classes}, d={stats.dim} do not fit the store (C={num_classes}, "
                         f"d={dim})")
    return stats, None


def _pass1(store: FeatureStore, stats: ClassStats, rows: int) -> None:
    for chunk in store.iter_chunks(rows, reuse=True):
        stats.update(torch.from_numpy(np.asarray(chunk.features)), torch.from_numpy(chunk.labels))
        del chunk  # before the next read: one chunk in memory at a time


def _inputs(store: FeatureStore, stats: ClassStats, c: compute.Collapse, sha, num_classes: int, layer, empty,
            has_classifier: bool) -> dict:
    ids = c.ids
    return {
        "source": store.source,
        "sha256": sha,
        "num_samples": int(c.n.sum()),
        "num_classes": len(ids),
        "num_labels": num_classes,
        "dim": store.dim,
        "layer": layer or store.metadata.get("layer"),
        "has_classifier": has_classifier,
        "has_logits": store.has_logits,
        "class_names": [store.class_names[i] for i in ids] if store.class_names else [str(i) for i in ids],
        "class_ids": ids.tolist(),
        "empty_classes": empty,
        "zero_features": int(stats.zero_norm.sum()),
        "metadata": store.metadata,
        "nc_probe_version": __version__,
    }


def _timed(fn, *args):
    t = time.perf_counter()
    return fn(*args), time.perf_counter() - t


def _num_classes(store: FeatureStore, labels: np.ndarray) -> int:
    top = int(labels.max()) + 1 if len(labels) else 0  # a torchrun shard may be empty
    if store.W is not None and store.W.shape[0] < top:
        raise InputError(f"the classifier W has {store.W.shape[0]} rows but the labels go up to {top - 1}",
                         path=store.source, fix="pass the W of the model that was trained on these labels")
    if store.class_names is not None and len(store.class_names) < top:
        raise InputError(f"{len(store.class_names)} class names but the labels go up to {top - 1}",
                         path=store.source, fix="give one name per class")
    sizes = [top] + ([store.W.shape[0]] if store.W is not None else [])
    if store.has_logits:
        sizes.append(store.read("logits", 0, 1).shape[1])
        if sizes[-1] < top:
            raise InputError(f"logits have {sizes[-1]} columns but the labels go up to {top - 1}",
                             path=store.source, fix="store the logits of all classes")
    return max(sizes)
