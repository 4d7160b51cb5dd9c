"""Per-class rows of :class:`~nc_probe.stats.class_stats.ClassStats`, for the classes seen only.

A language model's head has 50k-256k classes, of which a sample of tokens holds a fraction; a row of float64 means
per vocabulary entry (4.2 GB at V = 256k, d = 2048) would be mostly zeros. :class:`ClassRows` keeps one row per
class seen, found through a sorted index (class ids -> rows). Rows are appended as new classes arrive, in tensors
with spare capacity (grown by half at a time, so that appending is amortised O(1) per class); :meth:`compact` puts
them in ascending class order, the order every consumer reads (already the case when the classes were given up
front, in order, as the analysis does after reading the labels).
"""

from __future__ import annotations

import numpy as np
import torch

from nc_probe.core.errors import InputError

F64 = torch.float64
GROWTH = 1.5


class ClassRows:
    """Row storage for ``count`` (int64), ``mean`` (d, float64), ``m2``, ``zero_norm`` and, with ``moments``, the
    d x d unit-feature second moments ``zz`` of each class seen."""

    def __init__(self, dim: int, device, ids=None, moments: bool = False):
        self.dim = dim
        self.device = torch.device(device)
        self.moments = moments
        ids = np.zeros(0, dtype=np.int64) if ids is None else np.unique(np.asarray(ids, dtype=np.int64))
        self.index_ids = ids  # sorted class ids
        self.index_rows = np.arange(len(ids), dtype=np.int64)  # their rows
        self.k = len(ids)
        self._allocate(len(ids))

    def _allocate(self, cap: int) -> None:
        d, dev = self.dim, self.device
        self.count = torch.zeros(cap, dtype=torch.long, device=dev)
        self.mean = torch.zeros(cap, d, dtype=F64, device=dev)
        self.m2 = torch.zeros(cap, dtype=F64, device=dev)
        self.zero_norm = torch.zeros(cap, dtype=torch.long, device=dev)
        self.zz = torch.zeros(cap if self.moments else 0, d, d, dtype=F64, device=dev)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "zero_norm": self.zero_norm, "zz": self.zz}

    @property
    def capacity(self) -> int:
        return len(self.count)

    @property
    def in_order(self) -> bool:
        """Row i holds the i-th smallest class id, and no row is spare."""
        return self.capacity == self.k and bool(np.all(self.index_rows == np.arange(self.k)))

    # ------------------------------------------------------------------ lookup
    def find(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (-1 for classes without a row)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not self.k:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.index_ids, ids), self.k - 1)
        return np.where(self.index_ids[pos] == ids, self.index_rows[pos], -1)

    def rows_for(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (sorted, unique), new zero rows for the classes not seen before."""
        rows = self.find(ids)
        new = rows < 0
        if new.any():
            fresh = np.asarray(ids, dtype=np.int64)[new]
            start = self.k
            self._reserve(start + len(fresh))
            rows[new] = np.arange(start, start + len(fresh))
            pos = np.searchsorted(self.index_ids, fresh)
            self.index_ids = np.insert(self.index_ids, pos, fresh)
            self.index_rows = np.insert(self.index_rows, pos, rows[new])
            self.k = start + len(fresh)
        return rows

    def _reserve(self, rows: int) -> None:
        if rows <= self.capacity:
            return
        cap = max(rows, int(self.capacity * GROWTH), 16)
        old = {name: t[: self.k] for name, t in self.tensors().items()}
        self._allocate(cap)
        for name, t in self.tensors().items():
            if len(t):
                t[: self.k] = old[name]

    # ------------------------------------------------------------------ order
    def compact(self) -> None:
        """Rows in ascending class order and exactly as many as classes (a no-op when they already are)."""
        if self.in_order:
            return
        perm = torch.from_numpy(self.index_rows).to(self.device)
        self.count, self.mean = self.count[perm], self.mean[perm]
        self.m2, self.zero_norm = self.m2[perm], self.zero_norm[perm]
        self.zz = self.zz[perm] if self.moments else self.zz
        self.index_rows = np.arange(self.k, dtype=np.int64)

    def dense(self, name: str, num_classes: int) -> torch.Tensor:
        """The rows of ``name`` spread over all ``num_classes`` classes (zeros for classes without a row)."""
        t = self.tensors()[name]
        out = torch.zeros((num_classes, *t.shape[1:]), dtype=t.dtype, device=t.device)
        if self.k:
            idx = torch.from_numpy(self.index_ids).to(t.device)
            out[idx] = t[torch.from_numpy(self.index_rows).to(t.device)]
        return out


def host_rows(features, dim: int) -> np.ndarray:
    """Features as a 2-D numpy array (float32 and float64 kept as they are, anything else cast to float64)."""
    if isinstance(features, torch.Tensor):
        t = features.detach().cpu()
        if t.dtype not in (torch.float32, torch.float64):
            t = t.to(F64)
        a = t.numpy()
    else:
        a = np.asarray(features)
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float64)
    return a.reshape(len(a), -1 if a.size else dim)


def host_labels(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).astype(np.int64, copy=False).reshape(-1)


def check_ids(ids, num_classes: int, what: str) -> list[int]:
    """The sorted distinct class ids of ``ids``, each checked to lie in ``[0, num_classes)``."""
    ids = sorted({int(c) for c in ids})
    bad = [c for c in ids if not 0 <= c < num_classes]
    if bad:
        raise InputError(f"{what} names {bad[:5]} but the labels only go from 0 to {num_classes - 1}",
                         fix="pick class indices in that range")
    return ids
