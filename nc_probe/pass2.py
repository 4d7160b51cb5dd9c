"""Pass 2 over the features: NC4 and the accuracies, decided against the final class means (and the PCA sample).

On a GPU (or ``backend="torch"``) every row is scored in float64 by :class:`~nc_probe.metrics.predictions.Predictor`.
On the CPU, float32 features are screened in float32 first (:mod:`nc_probe.screen`: about twice the speed, with a
rigorous rounding bound) and only the rows it cannot decide are scored in float64, so every decision is the float64
one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from .metrics.predictions import PredictionTally, Predictor, logits_argmax
from .pca import PCASample
from .screen import Float32Screen
from .stats import ClassStats
from .store import FeatureStore

PASS2_BLOCK = 4096  # CPU pass 2: rows cast to float64 and scored at a time (a cache-sized block)
PASS2_READ_ROWS = 16384  # CPU pass 2: rows per read
SCORE_BYTES = 256 << 20  # CPU pass 2: at most this much score matrix per block
DEVICE_SCORE_BYTES = 512 << 20  # GPU pass 2: the same, per block of a chunk


class Observer(Protocol):
    """Something else that wants every row of pass 2 (the PCA sample, a group of subspace statistics)."""

    def add(self, start: int, h: torch.Tensor, y: torch.Tensor) -> None: ...


def second_pass(store: FeatureStore, stats: ClassStats, ids, W, rows: int, pca: PCASample | None = None, *,
                keep: np.ndarray | None = None, observers: Sequence[Observer] = ()) -> PredictionTally:
    """Tally the classifier's and the nearest class center's predictions of every row (synced across ranks).

    ``keep`` (per class): rows of the other classes are left out. ``observers`` see every row read (their own
    class filters apply). The model's prediction is the argmax of the stored logits when the store has them (the
    model computed them already: a 32k-way head need not be recomputed), else of ``W h + b``.
    """
    observers = ([pca] if pca is not None else []) + list(observers)
    if stats.host_kernels:
        return _second_pass_host(store, stats, ids, W, rows, keep, observers)
    dev = stats.device
    predictor = _predictor(store, stats, ids, W)
    tally = PredictionTally(stats.num_classes)
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
        step = _block_rows(predictor.cols.shape[1], DEVICE_SCORE_BYTES)
        for s in range(0, len(y), step):
            tally.add(y[s:s + step], *predictor.predict(h[s:s + step], None if logits is None else logits[s:s + step]))
    return tally.sync()


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


def _predictor(store, stats, ids, W) -> Predictor:
    dev = stats.device
    sel = torch.as_tensor(ids, device=dev)
    if store.has_logits or store.has_predictions:
        W = None  # the model's own outputs decide its predictions
    return Predictor(stats.mean[sel], sel, None if W is None else torch.as_tensor(W, dtype=torch.float64, device=dev),
                     None if W is None or store.b is None else torch.as_tensor(store.b, dtype=torch.float64,
                                                                                 device=dev))


def _second_pass_host(store, stats, ids, W, rows, keep, observers) -> PredictionTally:
    """:func:`second_pass` on the CPU, with the same float64 decisions as :class:`Predictor`, ``PASS2_BLOCK`` rows
    at a time.

    Float32 features are first scored in float32 (about twice the speed), with a rigorous bound on the rounding
    (``Float32Screen``); a row whose best class does not win by more than that bound (near-ties, exact ties) is
    scored again in float64 exactly as before, so every decision is the float64 one.
    """
    predictor = _predictor(store, stats, ids, W)
    use_w = predictor.has_classifier
    exact = predictor.positions
    screen = Float32Screen(predictor.cols, predictor.sq, predictor.K, predictor.b)
    tally = PredictionTally(stats.num_classes)
    first = np.asarray(store.read("features", 0, min(1, store.num_samples)))
    itemsize = 4 if first.dtype == np.float32 else 8  # float32 rows are scored in float32 (the screen)
    block_rows = _block_rows(predictor.cols.shape[1], itemsize=itemsize)
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
            block = feats[s:e]
            h = None
            screened = screen(block) if block.dtype == torch.float32 else None
            if screened is None:
                h = buf[: e - s]
                h.copy_(block)
                ncc, model = exact(h)
            else:
                ncc, model, unsure = screened
                if len(unsure):
                    ncc[unsure], again = exact(block[unsure].to(torch.float64))
                    if model is not None:
                        model[unsure] = again
            ncc = predictor.ids[ncc]
            if not use_w:
                model = logits_argmax(None if logits is None else logits[s:e])
            tally.add(labels[s:e], ncc, model)
        del feats, labels, logits  # before the next read: one chunk in memory at a time
    return tally.sync()
