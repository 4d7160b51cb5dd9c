""":class:`NeuralCollapse`: the collapse report of the rows seen so far, accumulated batch by batch while a model
trains, in the torchmetrics protocol (``update`` / ``compute`` / ``reset`` / ``sync`` / ``unsync``).

Why not a ``torchmetrics.Metric`` subclass: torchmetrics reduces each state with a fixed function (sum, cat, ...);
nc-probe's class statistics are float64 means and scatters combined by Chan et al.'s re-centred merge, exact near
collapse where sums of squares lose every digit. The protocol is matched instead, and the Lightning callback
(:mod:`nc_probe.training.lightning`) logs the scalars itself.

Synchronisation is sync-then-unsync: :meth:`sync` combines a COPY of the statistics over the torch.distributed ranks
(statistics only, never rows: per class a count, a mean and a trace, and one d x d scatter), :meth:`compute` reads
the copy and :meth:`unsync` puts this rank's own statistics back, so computing twice gives the same report and
nothing is counted twice. Ranks may hold uneven shares and different classes (a rank may have seen no row at all).

nc4 and the accuracies compare each row's classifier output with its nearest class mean, so they need the final
means before the rows are scored: ``compute(W, b, second_pass=loader)`` reads the rows again (an exact second pass,
as ``analyze`` does). Without it they are None. A one-pass variant would score each batch against the means so far
(early batches against noisy means) or against the previous epoch's means (a lag of one epoch): both approximate
the report of the epoch's own means, and nc-probe does not offer them. ``acc_nearest_subspace`` (its bases come
from a pass of ``analyze``'s own) stays None here; every other key is the number ``analyze_features`` gives.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np
import torch

from nc_probe.analysis import from_stats
from nc_probe.analysis.label_free_report import label_free_report, lidar_of, row_stats, source_stats
from nc_probe.core import distributed
from nc_probe.core.errors import InputError
from nc_probe.core.settings import MetricSettings, metric_settings
from nc_probe.metrics import probe
from nc_probe.reports.report import Report
from nc_probe.stats.class_stats import ClassStats
from nc_probe.stats.moment_plan import pass1_classes
from nc_probe.stats.predictions import PredictionTally

Batches = Iterable | Callable[[], Iterable]


class NeuralCollapse:
    """Streaming neural-collapse metric; see the module docstring.

    Parameters
    ----------
    num_classes:
        C, the classifier's outputs. None: label-free mode (``update(features)`` without labels; the report holds
        rankme, alpha_req, rank_effective_total, and lidar when ``source`` ids are given).
    dim:
        d, when known (checked against every batch); by default the first batch's.
    subspaces:
        Keep each class's d x d unit-feature moments for the subspace metrics (ranks, angles, coding rates):
        C d^2 float64, so by default only when they fit ``settings.memory_budget``.
    class_names, settings, **shortcuts:
        As :func:`nc_probe.analyze_features`.

    The state lives on the device of the first batch's features (float64 whatever their dtype).
    """

    def __init__(self, num_classes: int | None = None, dim: int | None = None, *, subspaces: bool | None = None,
                 class_names=None, settings: MetricSettings | None = None, **shortcuts):
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 2):
            raise InputError(f"num_classes={num_classes!r}: the collapse metrics compare at least 2 classes",
                             fix="pass the classifier's number of outputs, or None for the label-free measures")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise InputError(f"dim={dim!r}: the features' dimension is a positive int",
                             fix="pass d, or leave dim out to take it from the first batch")
        self.num_classes = num_classes
        self.dim = dim
        self.subspaces = subspaces
        self.class_names = class_names
        self.settings = metric_settings(settings, **shortcuts)
        self.reset()

    # ------------------------------------------------------------------ the torchmetrics protocol
    def reset(self) -> None:
        """Forget every row (e.g. between epochs)."""
        self._stats: ClassStats | None = None
        self._sources: ClassStats | None = None
        self._local: tuple | None = None  # this rank's own statistics while a synced copy is in place

    @property
    def labelled(self) -> bool:
        return self.num_classes is not None

    @property
    def synced(self) -> bool:
        return self._local is not None

    def update(self, features, labels=None, *, source=None) -> None:
        """Add a batch: ``features`` (n, d) (any float dtype, any device; reshaped to n rows), ``labels`` (n,) class
        ids in [0, num_classes) (none in label-free mode), ``source`` (n,): the source sample each row is a view of
        (for lidar)."""
        if self.synced:
            raise InputError("update() after sync()", fix="call unsync() first (compute() does both)")
        h = torch.as_tensor(features).detach()
        h = h.reshape(len(h), -1) if h.ndim != 2 else h
        if self.labelled and labels is None:
            raise InputError("update(features) without labels on a metric with num_classes",
                             fix="pass the labels, or build NeuralCollapse() without num_classes for label-free mode")
        if not self.labelled and labels is not None:
            raise InputError("labels given to a label-free NeuralCollapse (num_classes=None)",
                             fix="build it with num_classes=C to use them")
        self._ensure(h.shape[1], h.device, source is not None)
        assert self._stats is not None
        if self.labelled:
            self._stats.update(h, torch.as_tensor(labels).detach())
        else:
            self._stats.update(h, torch.zeros(len(h), dtype=torch.long, device=h.device))
        if source is not None:
            if self._sources is None:
                raise InputError("source given for some batches only", fix="give source ids with every batch")
            self._sources.update(h, torch.as_tensor(source).detach())

    def compute(self, W=None, b=None, *, second_pass: Batches | SecondPass | None = None) -> Report:
        """The Report of every rank's rows so far (the numbers of :func:`nc_probe.analyze_features` on them).

        ``W`` (C, d), ``b`` (C,): the classifier (nc2_*_W, nc3). ``second_pass``: the same rows again, an iterable of
        ``(features, labels)`` batches or a function returning one (e.g. the validation loader through the model),
        or a :meth:`second_pass` scorer already fed: gives nc4, acc_model (with W), acc_ncc and (with the setting
        ``mahalanobis=True``) acc_ncc_mahalanobis against the final means."""
        if isinstance(second_pass, SecondPass):
            if second_pass.metric is not self:
                raise InputError("a SecondPass of another metric", fix="use this metric's second_pass()")
            return self._report(second_pass.stats, second_pass.sources, W, b, second_pass)
        self.sync()
        try:
            assert self._stats is not None
            scorer = None
            if second_pass is not None and self.labelled:
                scorer = SecondPass(self, self._stats, self._sources, W, b)
                for batch in second_pass() if callable(second_pass) else second_pass:
                    scorer.update(batch[0], batch[1])
            return self._report(self._stats, self._sources, W, b, scorer)
        finally:
            self.unsync()

    def second_pass(self, W=None, b=None) -> SecondPass:
        """A scorer for the second pass fed by the caller (``scorer.update(h, y)`` per batch, then
        ``compute(W, b, second_pass=scorer)``): several metrics (layers) can share one run of the model."""
        if not self.labelled:
            raise InputError("a second pass of a label-free metric", fix="compute() it directly")
        self.sync()
        try:
            assert self._stats is not None
            return SecondPass(self, self._stats, self._sources, W, b)
        finally:
            self.unsync()

    def sync(self) -> None:
        """Replace this rank's statistics by a combined copy of every rank's (a no-op copy in one process)."""
        if self.synced:
            return
        dim, views = self._shape()  # before anything changes: a refusal leaves the metric as it was
        self._local = (self._stats, self._sources)
        self._stats = self._combined(self._stats, dim, lambda: self._new_stats(dim, self._device()))
        self._sources = self._combined(self._sources, dim, lambda: source_stats(dim, self._device())) \
            if views else None

    def unsync(self) -> None:
        """Put this rank's own statistics back after :meth:`sync`."""
        if self._local is not None:
            self._stats, self._sources = self._local
            self._local = None

    def state_bytes(self) -> int:
        """Bytes held by the statistics' tensors (this rank's)."""
        return sum(_tensor_bytes(s) for s in (self._stats, self._sources) if s is not None)

    # ------------------------------------------------------------------ internals
    def _ensure(self, dim: int, device, views: bool) -> None:
        if self.dim is not None and dim != self.dim:
            raise InputError(f"features of dimension {dim} for a metric of dim={self.dim}",
                             fix="feed the layer the metric was made for")
        if self._stats is None:
            self._stats = self._new_stats(dim, device)
            self._sources = source_stats(dim, device) if views else None
        elif self._stats.dim != dim:
            raise InputError(f"features of dimension {dim} after batches of dimension {self._stats.dim}",
                             fix="feed the same layer every batch, or reset() between layers")
        elif views and self._sources is None:
            raise InputError("source given for some batches only", fix="give source ids with every batch")

    def _new_stats(self, dim: int, device) -> ClassStats:
        if not self.labelled:
            return row_stats(dim, device)
        C = self.num_classes
        assert C is not None
        tracked = [] if self.subspaces is False else pass1_classes(C, dim, self.settings)
        # every class's d x d moments fit the budget: their rows are allocated once, not grown (and copied) by half
        # as classes arrive
        return ClassStats(C, dim, subspace_classes=tracked, device=device,
                          classes=range(C) if tracked is None else None)

    def _device(self) -> torch.device:
        return self._stats.device if self._stats is not None else torch.device("cpu")

    def _shape(self) -> tuple[int, bool]:
        """``(d, views)`` agreed by every rank (a rank that saw no row learns them from the others)."""
        mine = None if self._stats is None else (self._stats.dim, self._sources is not None)
        seen = {s for s in distributed.gather_objects(mine) if s is not None}
        if not seen:
            raise InputError("compute() before any update()", fix="update the metric with at least one batch")
        if len(seen) > 1:
            raise InputError(f"ranks disagree on (dimension, views): {sorted(seen)}",
                             fix="feed every rank the same layer, with source ids on all ranks or none")
        return seen.pop()

    @staticmethod
    def _combined(stats: ClassStats | None, dim: int, empty: Callable[[], ClassStats]) -> ClassStats:
        out = copy.deepcopy(stats) if stats is not None else empty()
        return out.all_reduce() if distributed.active() else out

    def _report(self, stats: ClassStats, sources: ClassStats | None, W, b, scorer: SecondPass | None) -> Report:
        if not self.labelled:
            return label_free_report(stats, sources, source="<NeuralCollapse>")
        tally, mahalanobis = (None, None) if scorer is None else scorer.finish()
        report = from_stats.report_from_stats(stats, W=W, b=b, tally=tally, class_names=self.class_names,
                                              settings=self.settings, synced=True)
        report.metrics["acc_ncc_mahalanobis"] = mahalanobis
        if sources is not None:
            report.metrics["lidar"] = lidar_of(sources)
        report.inputs["source"] = "<NeuralCollapse>"
        return report


class SecondPass:
    """nc4 and the accuracies: every rank scores its rows against the combined class means (and, when the metric's
    settings ask, the Mahalanobis rule built from the combined statistics); :meth:`finish` sums the counts over the
    ranks."""

    def __init__(self, metric: NeuralCollapse, stats: ClassStats, sources: ClassStats | None, W, b):
        self.metric, self.stats, self.sources = metric, stats, sources
        self.tally = PredictionTally.for_stats(stats, W, b)
        ids = stats.class_ids[stats.class_count.cpu().numpy() > 0]
        self.maha = None  # acc_ncc_mahalanobis: only when the metric's settings ask (``mahalanobis=True``)
        if metric.settings.mahalanobis and stats.dim * len(ids) <= probe.MAHALANOBIS_MAX_WORK:
            self.maha = probe.ProbeTally(*probe.mahalanobis_classifier(*from_stats.class_moments(stats, ids)), ids)

    def update(self, features, labels) -> None:
        h = torch.as_tensor(features).detach()
        h = h.reshape(len(h), -1)
        y = torch.as_tensor(labels).detach().reshape(-1).long()
        self.tally.update(h, y)
        if self.maha is not None:
            self.maha.add(0, h, y.cpu())

    def finish(self) -> tuple[PredictionTally, float | None]:
        self.tally.sync()
        if self.maha is not None:
            distributed.sync(self.maha)
        return self.tally, None if self.maha is None else self.maha.accuracy


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors an object holds (its attributes, one level of nesting), each counted once."""
    seen: dict[int, int] = {}
    for value in list(vars(obj).values()):
        inner = list(vars(value).values()) if hasattr(value, "__dict__") and not isinstance(value, torch.Tensor) \
            else [value]
        for v in inner:
            if isinstance(v, torch.Tensor):
                seen[id(v)] = v.numel() * v.element_size()
            elif isinstance(v, np.ndarray):
                seen[id(v)] = v.nbytes
    return sum(seen.values())
