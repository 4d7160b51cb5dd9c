"""NC4 and the accuracies (``docs/metrics.md``): a second pass over the features with the final means.

``nc4`` is the fraction of samples where the classifier's ``argmax_c (W h + b)_c`` differs from the
nearest-class-center rule ``argmin_c ||h - mu_c||`` (ties: lowest index). Counts are integers, so partial tallies
from batches or ranks add up exactly.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import torch

F64 = torch.float64


@dataclass
class PredictionTally:
    """Per-class integer counts: samples, classifier correct, NCC correct, classifier != NCC."""

    num_classes: int
    n: torch.Tensor = field(init=False)
    model_correct: torch.Tensor = field(init=False)
    ncc_correct: torch.Tensor = field(init=False)
    disagree: torch.Tensor = field(init=False)
    has_model: bool = False

    def __post_init__(self):
        for name in ("n", "model_correct", "ncc_correct", "disagree"):
            setattr(self, name, torch.zeros(self.num_classes, dtype=torch.long))

    def add(self, y: torch.Tensor, ncc_pred: torch.Tensor, model_pred: torch.Tensor | None) -> None:
        y = y.cpu()
        ncc_pred = ncc_pred.cpu()
        ones = torch.ones_like(y)
        self.n.index_add_(0, y, ones)
        self.ncc_correct.index_add_(0, y, (ncc_pred == y).long())
        if model_pred is not None:
            model_pred = model_pred.cpu()
            self.has_model = True
            self.model_correct.index_add_(0, y, (model_pred == y).long())
            self.disagree.index_add_(0, y, (model_pred != ncc_pred).long())

    def sync(self, group=None) -> PredictionTally:
        """Sum the counts of every torch.distributed rank (a no-op in a single process)."""
        from .. import distributed

        return distributed.sync(self, group)

    def sync_steps(self) -> Generator[tuple[str, Any], Any, None]:
        """The :func:`nc_probe.distributed.sync` protocol: integer counts simply add."""
        flag = torch.tensor([int(self.has_model)])  # a rank whose share was empty saw no classifier output
        yield "sum", [self.n, self.model_correct, self.ncc_correct, self.disagree, flag]
        self.has_model = bool(flag.item())

    @classmethod
    def for_stats(cls, stats, W=None, b=None) -> StreamingTally:
        """A tally to fill batch by batch (``tally.update(h, y)``) against the final means of ``stats``."""
        return StreamingTally(stats, W, b)


class Predictor:
    """The nearest-class-center rule (over the classes that have samples, mapped back to label ids) and the
    classifier's ``argmax_c (W h + b)_c``, from one float64 matrix product against the means and W's rows."""

    def __init__(self, means: torch.Tensor, class_ids: torch.Tensor, W: torch.Tensor | None = None,
                 b: torch.Tensor | None = None):
        self.means = means.to(F64)
        self.K = len(self.means)
        self.sq = self.means.square().sum(1)
        self.cols = (self.means if W is None else torch.cat([self.means, W.to(self.means)])).T
        self.has_classifier = W is not None
        self.b = None if W is None or b is None else b.to(self.means)
        self.ids = class_ids

    def positions(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Nearest-center position among the means (not yet a label id) and classifier class of float64 rows."""
        scores = h @ self.cols
        # ||h - mu||^2 = ||h||^2 - 2 h.mu + ||mu||^2; the first term is the same for every class.
        ncc = torch.argmin(self.sq - 2 * scores[:, : self.K], dim=1)
        if not self.has_classifier:
            return ncc, None
        logits = scores[:, self.K:] if self.b is None else scores[:, self.K:] + self.b
        return ncc, torch.argmax(logits, dim=1)

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
        count = stats.count
        ids = torch.nonzero(count > 0).flatten()
        to = dict(dtype=F64, device=stats.device)
        self.predictor = Predictor(stats.mean[ids], ids, None if W is None else torch.as_tensor(W, **to),
                                   None if b is None else torch.as_tensor(b, **to))

    def update(self, features, labels) -> StreamingTally:
        h = torch.as_tensor(features).to(self.predictor.means.device, F64)
        y = torch.as_tensor(labels).long().reshape(-1)
        self.add(y, *self.predictor.predict(h))
        return self
