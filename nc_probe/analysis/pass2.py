"""Pass 2 over the features: NC4 and the accuracies, decided against the final class means (and the PCA sample).

On a GPU (or ``backend="torch"``) every row is scored in float64 by :class:`~nc_probe.stats.predictions.Predictor`.
On the CPU, float32 features are screened in float32 first (:mod:`nc_probe.stats.screen`: about twice the speed, with a
rigorous rounding bound) and only the rows it cannot decide are scored in float64, so every decision is the float64
one. The nearest class mean runs over the classes the work plan gives it (:mod:`nc_probe.stats.workplan`: every class,
or the rows of the most frequent classes against their means); the classifier over every row of W, in blocks of rows
when W is large (a 256k-way head), unless the store has the model's predictions or logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from nc_probe.analysis.pca import PCASample
from nc_probe.extract.store import FeatureStore
from nc_probe.metrics.probe import ProbeTally
from nc_probe.stats.class_stats import ClassStats
from nc_probe.stats.predictions import WHOLE_BYTES, Classifier, PredictionTally, Predictor, logits_argmax
from nc_probe.stats.screen import ClassifierScreen, Float32Screen, screened_rows

PASS2_BLOCK = 4096  # CPU pass 2: rows cast to float64 and scored at a time (a cache-sized block)
PASS2_READ_ROWS = 16384  # CPU pass 2: rows per read
SCORE_BYTES = 256 << 20  # CPU pass 2: at most this much score matrix per block
DEVICE_SCORE_BYTES = 512 << 20  # GPU pass 2: the same, per block of a chunk


class Observer(Protocol):
    """Something else that wants every row of pass 2 (the PCA sample, a group of subspace statistics)."""

    def add(self, start: int, h: torch.Tensor, y: torch.Tensor) -> None: ...


def second_pass(store: FeatureStore, stats: ClassStats, ids, W, rows: int, pca: PCASample | None = None, *,
                keep: np.ndarray | None = None, observers: Sequence[Observer] = (),
                ncc_ids=None) -> PredictionTally:
    """Tally the classifier's and the nearest class center's predictions of every row (synced across ranks).

    ``keep`` (per class): rows of the other classes are left out. ``observers`` see every row read (their own
    class filters apply). The model's prediction is the stored ``predictions`` column when the store has one, the
    argmax of the stored logits when it has those (the model computed them already: a 32k-way head need not be
    recomputed), else ``argmax (W h + b)`` over every row of W (any float dtype; never copied whole in float64 when
    large). ``ncc_ids`` (sorted, default ``ids``): the classes the nearest class mean covers, scoring only their
    rows.
    """
    observers = ([pca] if pca is not None else []) + list(observers)
    ncc_ids = np.asarray(ids if ncc_ids is None else ncc_ids)
    member = None
    if len(ncc_ids) < len(ids):
        member = np.zeros(stats.num_classes, dtype=bool)
        member[ncc_ids] = True
    predictor = _predictor(store, stats, ncc_ids, W)
    tally = PredictionTally(stats.num_classes)
    tally.ncc_subset = member is not None
    if stats.host_kernels:
        _second_pass_host(store, predictor, tally, rows, keep, observers, member)
    else:
        _second_pass_device(store, stats, predictor, tally, rows, keep, observers, member)
    return tally.sync()


def _second_pass_device(store, stats, predictor, tally, rows, keep, observers, member) -> None:
    dev = stats.device
    c = predictor.classifier
    step = _block_rows(predictor.K + (0 if c is None else min(c.V, c.rows)), DEVICE_SCORE_BYTES)
    for start in range(0, store.num_samples, rows):
        stop = min(start + rows, store.num_samples)
        h = torch.from_numpy(np.asarray(store.read("features", start, stop))).to(dev, torch.float64)
        logits = _model_outputs(store, start, stop)
        y = torch.from_numpy(store.labels_chunk(start, stop))
        for o in observers:
            o.add(start, h, y)
        if keep is not None and not keep.all():
            sel = torch.from_numpy(keep[y.numpy()])
            h, y, logits = h[sel.to(dev)], y[sel], None if logits is None else logits[sel.numpy()]
        for s in range(0, len(y), step):
            hb, yb = h[s:s + step], y[s:s + step]
            scored = None if member is None else torch.from_numpy(member[yb.numpy()])
            ncc = predictor.ids[predictor.nearest(hb if scored is None else hb[scored.to(dev)])]
            model = c.argmax(hb) if c is not None else logits_argmax(None if logits is None else logits[s:s + step])
            tally.add(yb, ncc, model, scored)


def _block_rows(columns: int, score_bytes: int = SCORE_BYTES, itemsize: int = 8) -> int:
    """Rows scored at a time: ``PASS2_BLOCK``, fewer when the score matrix (rows x the means and classifier rows)
    would pass ``score_bytes`` (a 32k-way head: 4096 float64 rows would make 1.6 GB of scores and copies). Not much
    fewer than 1024: the product runs at half speed with ~150 rows (measured, 2-core AMD EPYC)."""
    return int(min(PASS2_BLOCK if score_bytes == SCORE_BYTES else 1 << 20,
                   max(64, score_bytes // (itemsize * max(columns, 1)))))


def _model_outputs(store: FeatureStore, start: int, stop: int):
    """The model's predictions of rows ``[start, stop)`` when the store has them (as classes, or as logits whose
    argmax is taken), else None."""
    if store.has_predictions:
        return store.read("predictions", start, stop).astype(np.int64)
    return store.read("logits", start, stop) if store.has_logits else None


def _predictor(store, stats: ClassStats, ids, W) -> Predictor:
    dev = stats.device
    pos = torch.as_tensor(np.searchsorted(stats.class_ids, ids), device=dev)
    if store.has_logits or store.has_predictions:
        W = None  # the model's own outputs decide its predictions
    return Predictor(stats.class_mean[pos], torch.as_tensor(np.asarray(ids), device=dev), W,
                     None if W is None else store.b)


def _second_pass_host(store, predictor: Predictor, tally: PredictionTally, rows, keep, observers, member) -> None:
    """:func:`second_pass` on the CPU, with the same float64 decisions as :class:`Predictor`, ``PASS2_BLOCK`` rows
    at a time.

    Float32 features are first scored in float32 (about twice the speed), with a rigorous bound on the rounding
    (:mod:`nc_probe.stats.screen`); a row whose best class does not win by more than that bound (near-ties, exact ties)
    is scored again in float64 exactly as before, so every decision is the float64 one.
    """
    c = predictor.classifier
    first = np.asarray(store.read("features", 0, min(1, store.num_samples)))
    itemsize = 4 if first.dtype == np.float32 else 8  # float32 rows are scored in float32 (the screens)
    whole = c is None or c.V * c.dim * 8 <= WHOLE_BYTES
    block_rows = _block_rows(predictor.K + (0 if c is None or not whole else c.V), itemsize=itemsize)
    # one product of each block with the means and W together when W is held whole and the NCC scores every row:
    # one row-norm pass and a wider product (300 columns run at 1.3x the flop rate of 100 on the 2-core Xeon)
    joint = c is not None and c.W64 is not None and member is None
    # float64 rows are rounded to float32 for the screen, whose bound then counts that rounding too
    ncc_screen = Float32Screen(predictor.cols if joint else predictor.means.T, predictor.sq, predictor.K,
                               predictor.b if joint else None, rounded_input=first.dtype == np.float64)
    w_screen = None if c is None else ClassifierScreen(c, c.V if whole else SCORE_BYTES // (4 * block_rows))
    buf = torch.empty(min(block_rows, store.num_samples), store.dim, dtype=torch.float64)
    rows = min(rows, PASS2_READ_ROWS)  # pass 2 needs no large chunks: less memory beside the subspace metrics
    read_buf = store.read_buffer("features", rows)

    for start in range(0, store.num_samples, rows):
        stop = min(start + rows, store.num_samples)
        feats = torch.from_numpy(np.asarray(store.read("features", start, stop, out=read_buf)))
        labels = torch.from_numpy(store.labels_chunk(start, stop))
        logits = _model_outputs(store, start, stop)
        for o in observers:
            o.add(start, feats, labels)
        if keep is not None and not keep.all():
            sel = keep[labels.numpy()]
            feats, labels = feats[torch.from_numpy(sel)], labels[torch.from_numpy(sel)]
            logits = None if logits is None else logits[sel]
        for s in range(0, len(labels), block_rows):
            e = min(s + block_rows, len(labels))
            block, y = feats[s:e], labels[s:e]
            scored = None if member is None else torch.from_numpy(member[y.numpy()])
            if joint:
                ncc, model = _decide(block, ncc_screen, predictor.positions, buf)
                tally.add(y, predictor.ids[ncc], model, None)
                continue
            ncc = _decide(block if scored is None else block[scored], ncc_screen, predictor.nearest, buf)
            if c is None:
                model = logits_argmax(None if logits is None else logits[s:e])
            else:
                model = _decide(block, w_screen, c.argmax, buf)
            tally.add(y, predictor.ids[ncc], model, scored)
        del feats, labels, logits  # before the next read: one chunk in memory at a time


def _decide(block: torch.Tensor, screen, exact, buf: torch.Tensor | None = None):
    """A block's decisions from the float32 screen where it is sure, else from ``exact`` (float64): one rule's
    (a tensor), or both of a joint screen's (the nearest mean's position, the classifier's class; ``exact``
    returns both, and a row either is unsure of gets both float64 decisions). ``buf``: where a block the screen
    cannot take is cast to float64 (a fresh tensor without one)."""
    rows32 = screened_rows(block, screen.rounded_input)
    screened = None if rows32 is None else screen(rows32)
    if screened is None:
        if buf is None:
            return exact(block.to(torch.float64))
        h = buf[: len(block)]
        h.copy_(block)
        return exact(h)
    decided = [d for d in screened[:-1] if d is not None]  # a means-only screen has no classifier decision
    unsure = screened[-1]
    if len(unsure):
        again = exact(block[unsure].to(torch.float64))
        for d, e in zip(decided, again if isinstance(again, tuple) else (again,)):
            d[unsure] = e
    return tuple(decided) if len(decided) > 1 else decided[0]


class ScreenedRule:
    """A pass observer feeding a linear rule's tally (:class:`~nc_probe.metrics.probe.ProbeTally`: the Mahalanobis
    nearest class mean, the linear probe) float32 rows the way pass 2 scores them: in float32 with the rounding bound
    of :class:`~nc_probe.stats.screen.ClassifierScreen`, and only the rows it cannot decide in float64 by the tally's
    own rule, so every decision is the float64 one. About twice the speed of scoring every row in float64, and no
    float64 copy of the chunk. Float64 rows, and rows on a GPU, go to the tally as they are."""

    def __init__(self, tally: ProbeTally):
        self.tally = tally
        W = tally.Wt.T
        self.screen = ClassifierScreen(Classifier(W, tally.b), len(W))
        self.block_rows = _block_rows(len(W), itemsize=4)

    def add(self, start: int, h: torch.Tensor, y: torch.Tensor) -> None:
        t = self.tally
        if h.dtype != torch.float32 or h.device.type != "cpu":
            t.add(start, h, y)
            return
        if t.keep is not None and not t.keep.all():
            sel = torch.from_numpy(t.keep[y.numpy()])
            h, y = h[sel], y[sel]
        correct = 0
        for s in range(0, len(y), self.block_rows):
            pred = _decide(h[s:s + self.block_rows], self.screen, t.decide)
            correct += int((t.ids[pred] == y[s:s + self.block_rows]).sum())
        t.correct += correct
        t.total += len(y)
