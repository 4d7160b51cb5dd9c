"""Streaming, mergeable float64 class statistics (``docs/metrics.md``, notation).

:class:`ClassStats` holds everything the metric contract needs from the features, in memory independent of N:

- ``count[c]`` and class means ``mean[c]`` (float64);
- the pooled within-class scatter ``scatter = sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T`` and its per-class traces
  ``m2[c] = sum_{y_i=c} ||h_i - mu_c||^2``, both accumulated about running means and combined with the pairwise
  update of Chan, Golub & LeVeque (1979), so ``nc1`` stays accurate when the means are far larger than the spread;
- per-class uncentered second moments of unit-normalized features ``zz[c] = sum_{y_i=c} z_i z_i^T`` for the classes
  whose subspace metrics are wanted (all by default), and ``zz_total`` when only some classes are tracked.

``update`` adds a batch, ``merge`` adds another ``ClassStats`` (any split and any merge order give the same
result to float tolerance), ``all_reduce`` combines the statistics of all ``torch.distributed`` ranks.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import InputError

F64 = torch.float64
GROUP_ROWS = 2048  # CPU update: rows of consecutive classes processed together (a few MiB of float64, in cache)
STAGE_ROWS = 8192  # CPU update: centered rows per pooled-scatter syrk


def gram(x: torch.Tensor) -> torch.Tensor:
    """``x^T x`` in float64. On CPU numpy's matmul recognises ``a.T @ a`` and calls BLAS syrk (half the flops)."""
    if x.device.type == "cpu":
        a = x.numpy()
        return torch.from_numpy(a.T @ a)
    return x.T @ x


def subspace_bytes(num_tracked: int, dim: int) -> int:
    """Memory held by the per-class ``d x d`` second-moment matrices."""
    return num_tracked * dim * dim * 8


@dataclass
class _Moments:
    """Counts, means and scatter of one batch or one rank, the operands of a Chan merge."""

    count: torch.Tensor  # (C,) int64
    mean: torch.Tensor  # (C, d)
    m2: torch.Tensor  # (C,)
    scatter: torch.Tensor  # (d, d)


class ClassStats:
    """Float64 sufficient statistics of labelled features; see the module docstring.

    Parameters
    ----------
    num_classes, dim:
        ``C`` and ``d``.
    subspace_classes:
        Class indices whose ``d x d`` unit-feature second moments are kept (default: all). ``[]`` keeps none.
    device:
        Where the statistics live; batches are moved there and cast to float64.
    backend:
        "auto": on the CPU, numpy kernels tuned for cache and BLAS (:meth:`_update_host`); elsewhere torch.
        "torch": the torch code path everywhere, as a GPU runs it (tests compare the two on the CPU).
    """

    def __init__(self, num_classes: int, dim: int, *, subspace_classes=None, device="cpu", backend: str = "auto"):
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.device = torch.device(device)
        self.backend = backend
        self.host_kernels = self.device.type == "cpu" and backend == "auto"
        if subspace_classes is None:
            tracked = list(range(self.num_classes))
        else:
            tracked = sorted({int(c) for c in subspace_classes})
            bad = [c for c in tracked if not 0 <= c < self.num_classes]
            if bad:
                raise InputError(
                    f"{{classes}} names {bad[:5]} but the labels only go from 0 to {self.num_classes - 1}",
                    fix="pick class indices in that range",
                )
        self.subspace_classes = tracked
        self._slot = torch.full((self.num_classes,), -1, dtype=torch.long, device=self.device)
        if tracked:
            self._slot[torch.tensor(tracked, device=self.device)] = torch.arange(len(tracked), device=self.device)
        C, d = self.num_classes, self.dim
        dev = self.device
        self.count = torch.zeros(C, dtype=torch.long, device=dev)
        self.mean = torch.zeros(C, d, dtype=F64, device=dev)
        self.m2 = torch.zeros(C, dtype=F64, device=dev)
        self.scatter = torch.zeros(d, d, dtype=F64, device=dev)
        self.zero_norm = torch.zeros(C, dtype=torch.long, device=dev)
        self.zz = torch.zeros(len(tracked), d, d, dtype=F64, device=dev)
        self.all_tracked = len(tracked) == C
        self.zz_total = None if self.all_tracked else torch.zeros(d, d, dtype=F64, device=dev)

    # ------------------------------------------------------------------ accumulation
    def update(self, features, labels) -> ClassStats:
        """Add one batch: ``features`` (n, d), ``labels`` (n,) integers in ``[0, C)``. Returns self."""
        if self.host_kernels:
            return self._update_host(features, labels)
        h = torch.as_tensor(features).to(self.device, F64)
        h = h.reshape(len(h), -1 if h.numel() else self.dim)  # an empty batch has no -1 to infer
        y = torch.as_tensor(labels).to(self.device, torch.long).reshape(-1)
        if self._empty_batch(h.shape, len(y)):
            return self
        y, order = torch.sort(y, stable=True)
        h = h[order]
        classes, counts = torch.unique_consecutive(y, return_counts=True)
        bcount = torch.zeros(self.num_classes, dtype=torch.long, device=self.device)
        bcount[classes] = counts
        bmean = torch.zeros(self.num_classes, self.dim, dtype=F64, device=self.device)
        bmean.index_add_(0, y, h)
        bmean[classes] /= counts.to(F64)[:, None]
        centered = h - bmean[y]
        bm2 = torch.zeros(self.num_classes, dtype=F64, device=self.device).index_add_(0, y, centered.square().sum(1))
        self._merge_moments(_Moments(bcount, bmean, bm2, gram(centered)))
        del centered

        norms = torch.linalg.vector_norm(h, dim=1)
        zero = norms == 0
        if bool(zero.any()):
            self.zero_norm.index_add_(0, y[zero], torch.ones_like(y[zero]))
        z = h / torch.where(zero, torch.ones_like(norms), norms)[:, None]
        del h
        if self.zz_total is not None:
            self.zz_total += gram(z)
        starts = torch.cumsum(counts, 0) - counts
        for c, s, n in zip(classes.tolist(), starts.tolist(), counts.tolist()):
            slot = int(self._slot[c])
            if slot >= 0:
                self.zz[slot] += gram(z[s : s + n])
        return self

    def _update_host(self, features, labels) -> ClassStats:
        """``update`` on the CPU, in numpy: the same statistics, computed class group by class group.

        Rows are sorted by class and taken in groups of consecutive classes of about ``GROUP_ROWS`` rows, so each
        group is gathered, cast to float64, centered and normalized while it sits in cache (no batch-sized float64
        copies); the centered rows are staged for one large BLAS syrk per ``STAGE_ROWS`` rows, and each tracked
        class's unit rows go to one syrk. Same formulas as the torch path, only the summation order differs.
        """
        # long: one loop over cache-sized groups of classes does every statistic while the group is in cache;
        # splitting it into functions per statistic would gather and cast each group's rows several times.
        a = _host_rows(features, self.dim)
        y = _host_labels(labels)
        if self._empty_batch(a.shape, len(y)):
            return self
        C, d = self.num_classes, self.dim
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= C:
            raise IndexError(f"label {lo if lo < 0 else hi} is outside 0..{C - 1}")
        bcount = np.bincount(y, minlength=C)
        order = np.argsort(y, kind="stable")
        present = np.flatnonzero(bcount)
        ends = np.cumsum(bcount[present])
        starts = ends - bcount[present]
        bmean = np.zeros((C, d))
        bm2 = np.zeros(C)
        bscatter = np.zeros((d, d))
        zero_norm = np.zeros(C, dtype=np.int64)
        slots = self._slot.numpy()
        zz = self.zz.numpy()
        zz_total = None if self.zz_total is None else self.zz_total.numpy()
        stage = np.empty((min(len(a), STAGE_ROWS), d))
        fill = 0
        i = 0
        while i < len(present):
            j = i + 1 + int(np.searchsorted(ends[i + 1:], starts[i] + GROUP_ROWS, side="right"))
            cls, cnt = present[i:j], bcount[present[i:j]]
            s0, s1 = int(starts[i]), int(ends[j - 1])
            loc = starts[i:j] - s0
            m = s1 - s0
            h = np.asarray(a[order[s0:s1]], dtype=np.float64)
            if m > len(stage) - fill:
                if fill:
                    st = stage[:fill]
                    bscatter += st.T @ st
                    fill = 0
            x = stage[fill : fill + m] if m <= len(stage) else np.empty((m, d))
            spans = list(zip(cls.tolist(), loc.tolist(), (loc + cnt).tolist()))
            for c, l0, l1 in spans:  # per class (numpy's add.reduceat is ~10x slower than these row sums)
                mean = h[l0:l1].sum(0) / (l1 - l0)
                bmean[c] = mean
                xc = np.subtract(h[l0:l1], mean, out=x[l0:l1])
                bm2[c] = np.einsum("ij,ij->", xc, xc)
            if m <= len(stage):
                fill += m
            else:
                bscatter += x.T @ x
            del x
            norms = np.sqrt(np.einsum("ij,ij->i", h, h))
            zero = norms == 0
            if zero.any():
                zero_norm += np.bincount(y[order[s0:s1]][zero], minlength=C)
                norms[zero] = 1.0
            h /= norms[:, None]
            if zz_total is not None:
                zz_total += h.T @ h
            for c, l0, l1 in spans:
                slot = slots[c]
                if slot >= 0:
                    z = h[l0:l1]
                    zz[slot] += z.T @ z
            i = j
        if fill:
            st = stage[:fill]
            bscatter += st.T @ st
        self._merge_moments(_Moments(torch.from_numpy(bcount), torch.from_numpy(bmean), torch.from_numpy(bm2),
                                     torch.from_numpy(bscatter)))
        self.zero_norm += torch.from_numpy(zero_norm)
        return self

    def _empty_batch(self, shape: tuple, num_labels: int) -> bool:
        """Check a batch's shape against the statistics; True when it has no rows."""
        if shape[1] != self.dim or shape[0] != num_labels:
            raise InputError(
                f"batch of shape {tuple(shape)} with {num_labels} labels does not fit statistics of dimension "
                f"{self.dim}",
                fix="pass features (n, d) and n labels",
            )
        return shape[0] == 0

    def merge(self, other: ClassStats) -> ClassStats:
        """Add the statistics of ``other`` (same C, d and tracked classes) into self. Returns self."""
        if (other.num_classes, other.dim, other.subspace_classes) != (
            self.num_classes,
            self.dim,
            self.subspace_classes,
        ):
            raise ValueError("can only merge ClassStats with the same classes, dimension and tracked classes")
        dev = self.device
        self._merge_moments(_Moments(other.count.to(dev), other.mean.to(dev), other.m2.to(dev),
                                     other.scatter.to(dev)))
        self.zero_norm += other.zero_norm.to(dev)
        self.zz += other.zz.to(dev)
        if self.zz_total is not None and other.zz_total is not None:
            self.zz_total += other.zz_total.to(dev)
        return self

    def _merge_moments(self, b: _Moments) -> None:
        # Chan et al.: M2_ab = M2_a + M2_b + n_a n_b / (n_a + n_b) * delta delta^T, delta = mean_b - mean_a.
        n_a = self.count.to(F64)
        n_b = b.count.to(F64)
        n = n_a + n_b
        safe = torch.where(n > 0, n, torch.ones_like(n))
        delta = b.mean - self.mean
        weight = n_a * n_b / safe
        wdelta = delta * weight.sqrt()[:, None]
        self.scatter += b.scatter + gram(wdelta)
        self.m2 += b.m2 + weight * delta.square().sum(1)
        self.mean += delta * (n_b / safe)[:, None]
        self.count += b.count

    def all_reduce(self, group=None) -> ClassStats:
        """Combine the statistics of every rank of ``torch.distributed`` in place (a no-op in one process)."""
        from . import distributed

        return distributed.sync(self, group)

    def sync_steps(self) -> Generator[tuple[str, Any], Any, None]:
        """The :func:`nc_probe.distributed.sync` protocol. Means and scatters are not sums: each rank first learns
        the global class means (from summed counts and sums), re-centres its scatter and traces on them (exact, no
        loss of accuracy near collapse), then everything is summed."""
        n_local = self.count.to(F64)
        total, sums = yield "sum", [self.count.clone(), self.mean * n_local[:, None]]
        n_total = total.to(F64)
        g_mean = sums / torch.where(n_total > 0, n_total, torch.ones_like(n_total))[:, None]
        delta = self.mean - g_mean
        delta[n_local == 0] = 0
        self.scatter += gram(delta * n_local.sqrt()[:, None])
        self.m2 += n_local * delta.square().sum(1)
        yield "sum", [self.scatter, self.m2, self.zero_norm, self.zz] + (
            [] if self.zz_total is None else [self.zz_total])
        self.count, self.mean = total, g_mean

    def truncated(self, num_classes: int) -> ClassStats:
        """These statistics for the classes below ``num_classes`` (exact when the others have no samples)."""
        C = num_classes
        tracked = None if self.all_tracked else [c for c in self.subspace_classes if c < C]
        out = ClassStats(C, self.dim, subspace_classes=tracked, device=self.device, backend=self.backend)
        out.count.copy_(self.count[:C])
        out.mean.copy_(self.mean[:C])
        out.m2.copy_(self.m2[:C])
        out.scatter.copy_(self.scatter)
        out.zero_norm.copy_(self.zero_norm[:C])
        keep = [slot for slot, c in enumerate(self.subspace_classes) if c < C]
        if keep:
            out.zz.copy_(self.zz[keep])
        if out.zz_total is not None:
            out.zz_total.copy_(self.zz_total if self.zz_total is not None else self.zz.sum(0))
        return out

    # ------------------------------------------------------------------ views used by the metrics
    @property
    def total(self) -> int:
        return int(self.count.sum())

    def second_moment_total(self) -> torch.Tensor:
        """``sum_i z_i z_i^T`` over all samples."""
        return self.zz.sum(0) if self.zz_total is None else self.zz_total

    def state_dict(self) -> dict:
        """Plain tensors, e.g. to save with ``torch.save`` or send between processes."""
        return {
            "num_classes": self.num_classes,
            "dim": self.dim,
            "subspace_classes": list(self.subspace_classes),
            "count": self.count,
            "mean": self.mean,
            "m2": self.m2,
            "scatter": self.scatter,
            "zero_norm": self.zero_norm,
            "zz": self.zz,
            "zz_total": self.zz_total,
        }

    def to_numpy(self) -> dict:
        return {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in self.state_dict().items()}


def _host_rows(features, dim: int) -> np.ndarray:
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


def _host_labels(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).astype(np.int64, copy=False).reshape(-1)


def pass1_classes(num_classes: int, dim: int, settings) -> list[int] | None:
    """The classes whose d x d moments pass 1 accumulates: all of them (None) or the user's pick when they fit the
    memory budget that way, else none ([]): the analysis then gathers subspace statistics in groups
    (:mod:`nc_probe.subspace_report`)."""
    classes = settings.classes
    n = num_classes if classes is None else len(classes)
    if subspace_bytes(n, dim) > settings.memory_budget:
        return []
    return None if classes is None else [c for c in classes if c < num_classes]


def as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
