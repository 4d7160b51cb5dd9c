"""The MCR^2 papers' nearest-subspace classifier (Yu et al. 2020, ``evaluate.py``): each class's subspace is the
span of the top ``min(30, rank_numerical)`` eigenvectors of its uncentred second moment of unit features ``S_c``;
a unit feature ``z`` goes to the class whose subspace leaves the smallest residual ``||z - U_c U_c^T z||``, i.e.
the largest ``||U_c^T z||^2``. ``acc_nearest_subspace`` is its accuracy. Ties are common here (a class spanning all
of R^d scores every z at 1; so does a one-sample class its own sample), so classes whose scores are within
``TIE`` of the best share the row: the true class among k tied ones counts 1/k, whatever the labels' order."""

from __future__ import annotations

import numpy as np
import torch

from nc_probe.metrics.probe import AccuracyTally
from nc_probe.metrics.unit_rows import unit_rows

NS_DIM = 30  # the MCR^2 code's default number of components per class
#: scored when NS_DIM * C * d is at most this (a pass of N x NS_DIM*C x d products): the samples and CIFAR-sized
#: heads are in, an ImageNet head is out (null)
NS_MAX_WORK = 1 << 23
TIE = 1e-12  # scores are squared norms of projections of unit vectors, in [0, 1]
BLOCK_BYTES = 16 << 20  # the float64 scores of one block of rows: below glibc's mmap threshold (32 MiB), so the
# blocks reuse memory instead of paying fresh pages (64 MiB blocks ran the pass 1.5x slower, 2-core Xeon VM)


def wanted(num_classes: int, dim: int) -> bool:
    return NS_DIM * num_classes * dim <= NS_MAX_WORK


class NearestSubspaceTally(AccuracyTally):
    """A pass observer counting the nearest-subspace rule's correct predictions. ``bases``: per class (``ids``
    order) a d x k_c orthonormal basis (k_c may be 0: that class is never predicted)."""

    def __init__(self, bases: list[np.ndarray], ids: np.ndarray, keep: np.ndarray | None = None):
        super().__init__(ids, keep)
        self.B = torch.from_numpy(np.ascontiguousarray(np.concatenate(bases, axis=1)))
        self.owner = torch.from_numpy(np.repeat(np.arange(len(bases)), [b.shape[1] for b in bases]))

    def credit(self, h: torch.Tensor, y: torch.Tensor) -> float:
        # scored in row blocks: a chunk's rows x every class's basis columns (up to 30 C) would be gigabytes
        step = max(1, BLOCK_BYTES // (8 * (self.B.shape[1] + len(self.ids))))
        return sum(self._credit(h[i:i + step], y[i:i + step]) for i in range(0, len(y), step))

    def _credit(self, h: torch.Tensor, y: torch.Tensor) -> float:
        z, _ = unit_rows(h)
        energy = (z @ self.B) ** 2
        scores = torch.zeros(len(y), len(self.ids), dtype=torch.float64).index_add_(1, self.owner, energy)
        best = scores.max(dim=1, keepdim=True).values
        tied = scores >= best - TIE
        own = torch.searchsorted(self.ids, y).clamp(max=len(self.ids) - 1)
        hit = (self.ids[own] == y) & tied.gather(1, own[:, None])[:, 0]
        return float((hit.double() / tied.sum(1)).sum())
