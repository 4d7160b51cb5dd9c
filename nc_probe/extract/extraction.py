"""Batched inference through a feature tap (step 3 of the pipeline): model + batches -> ClassStats + FeatureStore.

:func:`extract` runs the batches under ``torch.inference_mode`` (autocast when asked, pinned memory and
``non_blocking`` copies and ``channels_last`` on CUDA), checks every batch (NaN/Inf, labels the classifier knows),
and streams the features into a :class:`~nc_probe.stats.class_stats.ClassStats` on the device and into a FeatureStore:
in memory, or in a file (``save_features``, or a temporary file once the features outgrow
:attr:`ExtractionSettings.spill_threshold`). The dataset itself is never held in memory.

The taps themselves are in :mod:`nc_probe.taps`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from nc_probe.core.devices import amp_context, map_tensors, stats_device
from nc_probe.core.errors import InputError
from nc_probe.core.settings import ExtractionSettings, MetricSettings
from nc_probe.core.text import first_line, format_bytes
from nc_probe.extract.store import FeatureStore, StoreWriter, open_store
from nc_probe.stats.class_stats import ClassStats
from nc_probe.stats.moment_plan import pass1_classes
from nc_probe.taps import Tap


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
    spill_dir: str | None = None  # a temporary folder holding the store when it outgrew the spill threshold

    def cleanup(self) -> None:
        """Remove the spilled feature file (call once the store is no longer read)."""
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir = None

    @property
    def samples_per_s(self) -> float:
        return self.num_samples / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class BatchContext:
    """What the checks and messages of :func:`extract` know about the run."""

    source: str = "<model>"  # the checkpoint, for messages
    data_name: str = "the data"
    declared_classes: int | None = None  # the class count the data declares
    class_names: list | None = None
    metadata: dict | Callable[[], dict] | None = None  # or a callable, asked once extraction is over
    progress: Callable[[int, int | None], None] | None = None
    total: int | None = None


def extract(tap: Tap, batches: Iterable, *, device="cpu", context: BatchContext | None = None,
            settings: ExtractionSettings | None = None, metrics: MetricSettings | None = None,
            save_features=None) -> Extraction:
    """Run ``batches`` of ``(x, y)`` through ``tap`` and stream the features into statistics and a FeatureStore.

    The class count C of the statistics is the largest of what the data declares, the classifier's rows and the
    logits' columns; when none is known, no statistics are accumulated here (the analysis then makes them from the
    store). When the tap is the classifier's input, labels must be below its row count and the declared class count
    must equal it, else an InputError naming the checkpoint and the data. ``metrics`` decides which classes get
    subspace statistics (``classes``, ``memory_budget``); ``settings`` gives autocast and the spill threshold;
    ``save_features`` writes the store to this path instead of keeping it in memory.
    """
    run = _Run(tap, device, context or BatchContext(), settings or ExtractionSettings(), metrics or MetricSettings(),
               save_features)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for x, y in batches:
                run.add(x, y)
            run.finish_stats()
        seconds = time.perf_counter() - t0
        store = run.close()
    except BaseException:
        run.sink.abort()
        raise
    return Extraction(store=store, stats=run.fitted_stats(), layer=tap.layer, num_samples=run.done, seconds=seconds,
                      warnings=run.warnings + run.sink.warnings, spill_dir=run.sink.spill_dir)


class _Run:
    """The state of one :func:`extract` run, batch by batch."""

    def __init__(self, tap: Tap, device, context: BatchContext, settings: ExtractionSettings,
                 metrics: MetricSettings, save_features, *, accumulate: bool = True, spill_threshold=None):
        self.tap, self.ctx, self.metrics, self.accumulate = tap, context, metrics, accumulate
        self.device = torch.device(device)
        self.non_blocking = self.device.type == "cuda"
        self.amp = amp_context(settings.amp, self.device)
        self.feeder = _StatsFeeder(stats_device(self.device))
        self.sink = _FeatureSink(save_features, context.class_names,
                                 settings.spill_threshold if spill_threshold is None else spill_threshold)
        self.stats: ClassStats | None = None
        self.warnings: list[str] = []
        self.done, self.top = 0, -1
        self.first = True
        self.label_bound: int | None = None
        self.logit_columns: int | None = None

    def add(self, x, y: torch.Tensor) -> None:
        x = _to_device(x, self.device, self.non_blocking)
        with self.amp, first_forward(self.first, x, self.ctx):
            feats, logits = self.tap(x)
        self.consume(feats, logits, y)

    def consume(self, feats: torch.Tensor, logits, y: torch.Tensor) -> None:
        """One batch's tapped features (and the model's output) into the statistics and the store."""
        feats = self._checked(feats, len(y)).float()
        if self.first:
            self._start(feats, logits)
        batch_top = int(y.max())
        self.top = max(self.top, batch_top)
        if self.label_bound is not None and batch_top >= self.label_bound:
            raise InputError(f"{self.ctx.data_name} has label {batch_top} but the classifier ({self.tap.layer}) has "
                             f"{self.label_bound} outputs", path=self.ctx.source,
                             fix="pass the data the model was trained on ({data}), or select classes with "
                                 "{data_classes}")
        self._feed_stats(feats, y, batch_top)
        # The model's own prediction, not its logits: at a 32k-way head the logits of 200k samples would take 25 GB,
        # and pass 2 needs only their argmax (instead of recomputing W h + b for every class).
        predictions = None if self.logit_columns is None or logits is None else logits.argmax(1)
        self.sink.append(feats.cpu().numpy(), y.cpu().numpy().astype(np.int64, copy=False),
                         None if predictions is None else predictions.cpu().numpy())
        self.done += len(y)
        if self.ctx.progress is not None:
            self.ctx.progress(self.done, self.ctx.total)

    def _checked(self, feats: torch.Tensor, n: int) -> torch.Tensor:
        ctx = self.ctx
        if len(feats) != n:
            raise InputError(f"{self.tap.layer} gave {len(feats)} feature rows for a batch of {n} samples",
                             path=ctx.source, fix="tap a layer that keeps the batch dimension ({layer})")
        if not bool(torch.isfinite(feats).all()):
            bad = self.done + int((~torch.isfinite(feats)).any(1).nonzero()[0, 0])
            raise InputError(f"the features of {self.tap.layer} contain NaN or Inf (first at sample {bad} of "
                             f"{ctx.data_name})", path=ctx.source,
                             fix="run with {amp=off}, or check the model and its input normalisation")
        return feats

    def _start(self, feats: torch.Tensor, logits) -> None:
        """First batch: the class count, and the statistics when it is known."""
        self.first = False
        tap, ctx = self.tap, self.ctx
        self.logit_columns = None if logits is None else int(logits.shape[1])
        if tap.W is not None:
            _check_classifier(tap, ctx)
            self.label_bound = tap.num_outputs
            if ctx.declared_classes is not None and ctx.declared_classes != tap.num_outputs:
                raise InputError(f"{ctx.data_name} has {ctx.declared_classes} classes but the classifier "
                                 f"({tap.layer}) has {tap.num_outputs} outputs", path=ctx.source,
                                 fix="pass the data the model was trained on ({data}); for an image folder with "
                                     "some of its classes, map folders to class indices with {class_map} (a .txt "
                                     "of the classifier's class names, one per line, or JSON {folder: index})")
        sizes = [s for s in (ctx.declared_classes, tap.num_outputs if tap.W is not None else None,
                             self.logit_columns) if s]
        if sizes and self.accumulate:
            C, d = max(sizes), feats.shape[1]
            tracked = pass1_classes(C, d, self.metrics)
            with torch.inference_mode(False):  # normal tensors: callers may merge into them later
                self.stats = ClassStats(C, d, subspace_classes=tracked, device=self.feeder.device,
                                        backend=self.metrics.backend)

    def _feed_stats(self, feats: torch.Tensor, y: torch.Tensor, batch_top: int) -> None:
        if self.stats is None:
            return
        if batch_top >= self.stats.num_classes:
            self.stats = None  # more classes than declared: the analysis accumulates from the store
        elif feats.shape[1] != self.stats.dim:
            raise InputError(f"{self.tap.layer} gave {feats.shape[1]} features per sample after "
                             f"{self.stats.dim} in earlier batches", path=self.ctx.source,
                             fix="make all inputs the same shape (e.g. {image_size})")
        else:
            self.feeder.add(self.stats, feats, y)

    def finish_stats(self) -> None:
        if self.stats is not None:
            self.feeder.flush(self.stats)

    def close(self) -> FeatureStore:
        ctx = self.ctx
        if self.done == 0:
            raise InputError(f"{ctx.data_name} gave no samples", path=ctx.source,
                             fix="check {data}, {split}, {data_classes} and {limit}")
        meta = ctx.metadata() if callable(ctx.metadata) else dict(ctx.metadata or {})
        return self.sink.close(self.tap, meta, ctx.source)

    def fitted_stats(self) -> ClassStats | None:
        tap = self.tap
        sizes = [self.top + 1] + ([len(tap.W)] if tap.W is not None else []) + (
            [self.logit_columns] if self.logit_columns is not None else [])
        return fit_stats(self.stats, max(sizes))


def _check_classifier(tap: Tap, ctx: BatchContext) -> None:
    """A classifier with NaN or Inf weights (a diverged training run) would make every prediction wrong."""
    for name, a in (("weight", tap.W), ("bias", tap.b)):
        if a is not None and not np.all(np.isfinite(a)):
            bad = int(np.count_nonzero(~np.isfinite(a)))
            raise InputError(f"the classifier {tap.layer} has NaN or Inf in its {name} ({bad} of {a.size} entries)",
                             path=ctx.source, fix="the training run diverged: analyze an earlier checkpoint")


@contextlib.contextmanager
def first_forward(first: bool, x, ctx: BatchContext) -> Iterator[None]:
    """Around the first batch's forward pass: the model failing on it (inputs of a shape it cannot take, most
    often) is one InputError naming the data and the model, not a traceback from deep inside the model."""
    if not first:
        yield
        return
    try:
        yield
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        if isinstance(e, (InputError, torch.OutOfMemoryError)):
            raise
        shape = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"the model fails on the first batch of {ctx.data_name}, whose samples have shape {shape} "
                         f"({type(e).__name__}: {first_line(e, 120)})", path=ctx.source,
                         fix="pass data of the shape the model was trained on ({data}; {image_size} resizes "
                             "images)") from None


class _LayerView(Tap):
    """One layer of a :class:`~nc_probe.taps.layers.LayerTaps`, as :class:`_Run` sees a tap: its name, and the
    classifier's W and b for the penultimate layer only (the classifier reads that layer)."""

    def __init__(self, taps, name: str):
        self.taps, self.layer = taps, name

    def sync(self) -> None:
        from nc_probe.taps.select import PENULTIMATE

        self.num_outputs = self.taps.num_outputs
        if self.layer == PENULTIMATE:
            self.W, self.b = self.taps.W, self.taps.b


def extract_layers(taps, batches: Iterable, *, device="cpu", context: BatchContext | None = None,
                   settings: ExtractionSettings | None = None, metrics: MetricSettings | None = None
                   ) -> dict[str, Extraction]:
    """:func:`extract` for every layer of ``taps`` (a :class:`~nc_probe.taps.layers.LayerTaps`) from one forward
    pass per batch: a FeatureStore per layer (spilled to a temporary file once the layers together pass the spill
    threshold), no statistics (each layer's analysis accumulates its own, with the whole memory budget)."""
    context = context or BatchContext()
    settings = settings or ExtractionSettings()
    views = {n: _LayerView(taps, n) for n in taps.names}
    share = max(1, settings.spill_threshold // max(len(views), 1))
    quiet = dataclasses.replace(context, progress=None)
    runs = {n: _Run(v, device, context if i == 0 else quiet, settings, metrics or MetricSettings(), None,
                    accumulate=False, spill_threshold=share) for i, (n, v) in enumerate(views.items())}
    first = next(iter(runs.values()))
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for x, y in batches:
                x = _to_device(x, first.device, first.non_blocking)
                with first.amp, first_forward(first.first, x, context):
                    feats, logits = taps(x)
                for name, run in runs.items():
                    views[name].sync()
                    run.consume(feats[name], logits, y)
        seconds = time.perf_counter() - t0
        stores = {n: run.close() for n, run in runs.items()}
    except BaseException:
        for run in runs.values():
            run.sink.abort()
        raise
    return {n: Extraction(store=stores[n], stats=None, layer=n, num_samples=run.done, seconds=seconds,
                          warnings=run.warnings + run.sink.warnings, spill_dir=run.sink.spill_dir)
            for n, run in runs.items()}


class _FeatureSink:
    """Where extracted rows go: memory, or a store file (``save_features``, or a temporary file once the rows held
    in memory pass ``spill_threshold``; it lives as long as the analysis)."""

    def __init__(self, save_features, class_names, spill_threshold: int):
        self.class_names = class_names
        self.threshold = spill_threshold
        self.writer = None if save_features is None else StoreWriter(save_features, class_names=class_names)
        self.parts: list[tuple] = []
        self.held = 0
        self.spill_dir: str | None = None
        self.warnings: list[str] = []

    def append(self, h: np.ndarray, y: np.ndarray, predictions: np.ndarray | None) -> None:
        if self.writer is None:
            self.parts.append((h, y, predictions))
            self.held += h.nbytes + y.nbytes + (0 if predictions is None else predictions.nbytes)
            if self.held > self.threshold:
                self._spill()
        else:
            self.writer.append(h, y, predictions=predictions)

    def _spill(self) -> None:
        self.spill_dir = tempfile.mkdtemp(prefix="nc-probe-features-")
        self.writer = StoreWriter(os.path.join(self.spill_dir, "features.safetensors"), class_names=self.class_names)
        for h, y, predictions in self.parts:
            self.writer.append(h, y, predictions=predictions)
        self.parts = []
        self.warnings.append(f"the features exceed the spill threshold ({format_bytes(self.threshold)}); they are "
                             f"kept on disk in {self.spill_dir} during the analysis ({{spill_threshold}})")

    def close(self, tap: Tap, meta: dict, source: str) -> FeatureStore:
        if self.writer is not None:
            self.writer.metadata = meta
            return open_store(self.writer.close(W=tap.W, b=tap.b))
        h, y, predictions = zip(*self.parts)
        return FeatureStore.from_arrays(np.concatenate(h), np.concatenate(y),
                                        predictions=None if predictions[0] is None else np.concatenate(predictions),
                                        W=tap.W, b=tap.b, class_names=self.class_names, metadata=meta, source=source)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


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
        self.chunk: int | None = None

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
    return map_tensors(x, lambda t: t.to(device, non_blocking=non_blocking))


def fit_stats(stats: ClassStats | None, num_classes: int) -> ClassStats | None:
    """``stats`` with exactly ``num_classes`` classes: classes above it had no samples, so dropping them is exact.
    Returns None when the statistics cannot be fitted (more classes than accumulated): the analysis then
    accumulates its own."""
    if stats is None or stats.num_classes == num_classes:
        return stats
    if num_classes > stats.num_classes or int(stats.count[num_classes:].sum()) != 0:
        return None
    return stats.truncated(num_classes)
