"""The MCR^2 papers' nearest-subspace classifier (Yu et al. 2020, ``evaluate.py``): each class's subspace is the
span of the top ``min(30, rank_numerical)`` eigenvectors of its uncentred second moment of unit features ``S_c``;
a unit feature ``z`` goes to the class whose subspace leaves the smallest residual ``||z - U_c U_c^T z||``, i.e.
the largest ``||U_c^T z||^2``. ``acc_nearest_subspace`` is its accuracy. Ties are common here (a class spanning all
of R^d scores every z at 1; so does a one-sample class its own sample), so classes whose scores are within
``TIE`` of the best share the row: the true class among k tied ones counts 1/k, whatever the labels' order."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch

NS_DIM = 30  # the MCR^2 code's default number of components per class
#: scored when NS_DIM * C * d is at most this (a pass of N x NS_DIM*C x d products): the samples and CIFAR-sized
#: heads are in, an ImageNet head is out (null)
NS_MAX_WORK = 1 << 23
TIE = 1e-12  # scores are squared norms of projections of unit vectors, in [0, 1]


def wanted(num_classes: int, dim: int) -> bool:
    return NS_DIM * num_classes * dim <= NS_MAX_WORK


class NearestSubspaceTally:
    """A pass observer counting the nearest-subspace rule's correct predictions. ``bases``: per class (``ids``
    order) a d x k_c orthonormal basis (k_c may be 0: that class is never predicted)."""

    def __init__(self, bases: list[np.ndarray], ids: np.ndarray, keep: np.ndarray | None = None):
        self.B = torch.from_numpy(np.ascontiguousarray(np.concatenate(bases, axis=1)))
        self.owner = torch.from_numpy(np.repeat(np.arange(len(bases)), [b.shape[1] for b in bases]))
        self.ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        self.keep = keep
        self.correct = torch.zeros(1, dtype=torch.float64)  # fractional: tied classes share a row
        self.total = torch.zeros(1, dtype=torch.long)

    def add(self, start: int, h: torch.Tensor, y: torch.Tensor) -> None:
        y = y.cpu()
        if self.keep is not None and not self.keep.all():
            sel = torch.from_numpy(self.keep[y.numpy()])
            h, y = h[sel.to(h.device)], y[sel]
        if len(y) == 0:
            return
        h = h.to("cpu", torch.float64)
        norms = torch.linalg.vector_norm(h, dim=1, keepdim=True)
        z = h / torch.where(norms > 0, norms, torch.ones_like(norms))
        energy = (z @ self.B) ** 2
        scores = torch.zeros(len(y), len(self.ids), dtype=torch.float64).index_add_(1, self.owner, energy)
        best = scores.max(dim=1, keepdim=True).values
        tied = scores >= best - TIE
        own = torch.searchsorted(self.ids, y)
        known = (own < len(self.ids)) & (self.ids[own.clamp(max=len(self.ids) - 1)] == y)
        hit = known & tied.gather(1, own.clamp(max=len(self.ids) - 1)[:, None])[:, 0]
        self.correct += float((hit.double() / tied.sum(1)).sum())
        self.total += len(y)

    def sync_steps(self) -> Generator[tuple[str, Any], Any, None]:
        """The :func:`nc_probe.distributed.sync` protocol: counts add."""
        yield "sum", [self.correct, self.total]

    @property
    def accuracy(self) -> float | None:
        total = int(self.total)
        return float(self.correct) / total if total else None
