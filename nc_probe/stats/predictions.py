"""NC4 and the accuracies (``docs/metrics.md``): a second pass over the features with the final means.

``nc4`` is the fraction of samples where the classifier's ``argmax_c (W h + b)_c`` differs from the
nearest-class-center rule ``argmin_c ||h - mu_c||`` (ties: lowest index). Counts are integers, so partial tallies
from batches or ranks add up exactly. The classifier may have many more rows than there are classes with samples
(a language model's vocabulary): its argmax runs over all of them (:class:`Classifier`, a block of rows at a time),
so a prediction of a class without samples is wrong, and disagrees with the nearest class center.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

F64 = torch.float64
WHOLE_BYTES = 512 << 20  # a classifier up to this size in float64 is held whole (float64 and float32 copies)
BLOCK_BYTES = 256 << 20  # else its rows are cast and scored this many float64 bytes at a time


@dataclass
class PredictionTally:
    """Per-class integer counts: samples, classifier correct, NCC correct, classifier != NCC, and the samples the
    NCC scored (all of them, unless pass 2 scored the most frequent classes only: ``ncc_subset``)."""

    num_classes: int
    n: torch.Tensor = field(init=False)
    model_correct: torch.Tensor = field(init=False)
    ncc_correct: torch.Tensor = field(init=False)
    disagree: torch.Tensor = field(init=False)
    ncc_n: torch.Tensor = field(init=False)
    has_model: bool = False
    ncc_subset: bool = False

    def __post_init__(self):
        for name in ("n", "model_correct", "ncc_correct", "disagree", "ncc_n"):
            setattr(self, name, torch.zeros(self.num_classes, dtype=torch.long))

    def add(self, y: torch.Tensor, ncc_pred: torch.Tensor, model_pred: torch.Tensor | None,
            scored: torch.Tensor | None = None) -> None:
        """Rows of labels ``y``: the NCC's predictions of the rows ``scored`` (a mask; None: all rows) and the
        classifier's of every row."""
        y = y.cpu()
        self.n.index_add_(0, y, torch.ones_like(y))
        ys = y if scored is None else y[scored.cpu()]
        ncc_pred = ncc_pred.cpu()
        self.ncc_n.index_add_(0, ys, torch.ones_like(ys))
        self.ncc_correct.index_add_(0, ys, (ncc_pred == ys).long())
        if model_pred is not None:
            model_pred = model_pred.cpu()
            self.has_model = True
            self.model_correct.index_add_(0, y, (model_pred == y).long())
            ms = model_pred if scored is None else model_pred[scored.cpu()]
            self.disagree.index_add_(0, ys, (ms != ncc_pred).long())

    def sync(self, group=None) -> PredictionTally:
        """Sum the counts of every torch.distributed rank (a no-op in a single process)."""
        from nc_probe.core import distributed

        return distributed.sync(self, group)

    def sync_steps(self) -> Generator[tuple[str, Any], Any, None]:
        """The :func:`nc_probe.core.distributed.sync` protocol: integer counts simply add."""
        flag = torch.tensor([int(self.has_model)])  # a rank whose share was empty saw no classifier output
        yield "sum", [self.n, self.model_correct, self.ncc_correct, self.disagree, self.ncc_n, flag]
        self.has_model = bool(flag.item())

    @classmethod
    def for_stats(cls, stats, W=None, b=None) -> StreamingTally:
        """A tally to fill batch by batch (``tally.update(h, y)``) against the final means of ``stats``."""
        return StreamingTally(stats, W, b)


class Classifier:
    """``argmax_c (W h + b)_c`` over every row of W (V x d, any float dtype, numpy or torch): held whole in float64
    up to :data:`WHOLE_BYTES`, else cast to float64 and scored a block of rows at a time (ties: the lowest row)."""

    def __init__(self, W, b=None, device="cpu"):
        self.device = torch.device(device)
        self.W = torch.as_tensor(W)  # numpy arrays are shared, not copied
        self.b = None if b is None else torch.as_tensor(b)
        self.V, self.dim = self.W.shape
        self.whole = self.V * self.dim * 8 <= WHOLE_BYTES
        self.rows = self.V if self.whole else max(1, BLOCK_BYTES // (8 * max(self.dim, 1)))
        self.W64 = self.W.to(self.device, F64) if self.whole else None
        self.b64 = None if self.b is None or not self.whole else self.b.to(self.device, F64)
        self._w32: torch.Tensor | None = None
        norms = [float(torch.linalg.vector_norm(w, dim=1).max()) for _, w, _ in self.blocks64()]
        self.max_norm = max(norms) if norms else 0.0
        self.b_max = 0.0 if self.b is None else float(self.b.double().abs().max())

    def blocks64(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """``(first row, rows, their biases)`` in float64 on the device."""
        if self.W64 is not None:
            yield 0, self.W64, self.b64
            return
        for s in range(0, self.V, self.rows):
            yield (s, self.W[s:s + self.rows].to(self.device, F64),
                   None if self.b is None else self.b[s:s + self.rows].to(self.device, F64))

    def blocks32(self, rows: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """The same in float32, ``rows`` rows at a time (a float32 W is read in place)."""
        if self.whole and self._w32 is None:
            self._w32 = self.W.to(self.device, torch.float32)
        src = self._w32 if self._w32 is not None else self.W
        for s in range(0, self.V, rows):
            yield (s, src[s:s + rows].to(self.device, torch.float32),
                   None if self.b is None else self.b[s:s + rows].to(self.device, torch.float32))

    def argmax(self, h: torch.Tensor) -> torch.Tensor:
        """The classifier's class of each float64 row."""
        best = torch.full((len(h),), -torch.inf, dtype=F64, device=h.device)
        arg = torch.zeros(len(h), dtype=torch.long, device=h.device)
        for s, w, b in self.blocks64():
            scores = h @ w.T
            if b is not None:
                scores += b
            v, i = torch.max(scores, dim=1)
            take = v > best  # strictly: on a tie the earlier block (lower row) keeps it
            best = torch.where(take, v, best)
            arg = torch.where(take, i + s, arg)
        return arg


class Predictor:
    """The nearest-class-center rule (over the classes given, mapped back to label ids) and the classifier's
    ``argmax_c (W h + b)_c`` (:class:`Classifier`), both in float64."""

    def __init__(self, means: torch.Tensor, class_ids: torch.Tensor, W=None, b=None):
        self.means = means.to(F64)
        self.K = len(self.means)
        self.sq = self.means.square().sum(1)
        self.classifier = None if W is None else Classifier(W, b, self.means.device)
        self.has_classifier = W is not None
        self.b = None if self.classifier is None else self.classifier.b64
        self.ids = class_ids

    @property
    def cols(self) -> torch.Tensor:
        """The means' columns (d x K), then W's rows' when W is held whole (the joint screen's operand)."""
        c = self.classifier
        return self.means.T if c is None or c.W64 is None else torch.cat([self.means, c.W64]).T

    def nearest(self, h: torch.Tensor) -> torch.Tensor:
        """Position among the means of each float64 row's nearest (not yet a label id)."""
        # ||h - mu||^2 = ||h||^2 - 2 h.mu + ||mu||^2; the first term is the same for every class.
        return torch.argmin(self.sq - 2 * (h @ self.means.T), dim=1)

    def positions(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Nearest-center position among the means (not yet a label id) and classifier class of float64 rows."""
        return self.nearest(h), None if self.classifier is None else self.classifier.argmax(h)

    def predict(self, h: torch.Tensor, logits=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(ncc label ids, classifier classes)``; without W the classifier is the argmax of stored ``logits``
        (None when there are none either)."""
        ncc, model = self.positions(h)
        return self.ids[ncc], model if self.has_classifier else logits_argmax(logits)


def logits_argmax(logits) -> torch.Tensor | None:
    """The predicted class of each row: the argmax of logits (N, C), or predicted classes (N,) as they are."""
    if logits is None:
        return None
    t = torch.as_tensor(logits)
    return t.long() if t.ndim == 1 else torch.argmax(t, dim=1)


class StreamingTally(PredictionTally):
    """A :class:`PredictionTally` with its :class:`Predictor`: pass 2 for features streamed by the caller."""

    def __init__(self, stats, W=None, b=None):
        super().__init__(stats.num_classes)
        present = torch.nonzero(stats.class_count > 0).flatten()
        ids = torch.from_numpy(stats.class_ids).to(stats.device)[present]
        to = dict(dtype=F64, device=stats.device)
        self.predictor = Predictor(stats.class_mean[present], ids, None if W is None else torch.as_tensor(W, **to),
                                   None if b is None else torch.as_tensor(b, **to))

    def update(self, features, labels) -> StreamingTally:
        h = torch.as_tensor(features).to(self.predictor.means.device, F64)
        y = torch.as_tensor(labels).long().reshape(-1)
        self.add(y, *self.predictor.predict(h))
        return self
