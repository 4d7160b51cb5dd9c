"""Streaming, mergeable float64 class statistics (``docs/metrics.md``, notation).

:class:`ClassStats` holds everything the metric contract needs from the features, in memory independent of N and,
for the per-class parts, proportional to the classes seen rather than to C (a language model's 256k-way head):

- ``count[c]`` and class means ``mean[c]`` (float64);
- the pooled within-class scatter ``scatter = sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T`` and its per-class traces
  ``m2[c] = sum_{y_i=c} ||h_i - mu_c||^2``, both accumulated about running means and combined with the pairwise
  update of Chan, Golub & LeVeque (1979), so ``nc1`` stays accurate when the means are far larger than the spread;
- per-class uncentered second moments of unit-normalized features ``zz[c] = sum_{y_i=c} z_i z_i^T`` for the classes
  whose subspace metrics are wanted (all by default), and ``zz_total`` when only some classes are tracked.

The per-class rows exist only for the classes seen (:class:`~nc_probe.stats.class_rows.ClassRows`: sorted class ids ->
rows); ``class_ids``, ``class_count``, ``class_mean``, ... read them in ascending class order, and ``count``,
``mean``, ``m2``, ``zero_norm`` and ``zz`` are dense views over all C classes (zeros for classes without samples)
for small C. ``update`` adds a batch, ``merge`` adds another ``ClassStats`` whatever classes each has seen (any
split and any merge order give the same result to float tolerance), ``all_reduce`` combines the statistics of all
``torch.distributed`` ranks (the union of their classes, in class order on every rank).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from nc_probe.core.errors import InputError
from nc_probe.metrics.unit_rows import normalize_rows_, unit_rows, zero_rows_centred
from nc_probe.stats.class_rows import ClassRows, check_ids, host_labels, host_rows
from nc_probe.stats.gram import gram, gram_into, gram_upper_into, settle

F64 = torch.float64
GROUP_ROWS = 2048  # CPU update: rows of consecutive classes processed together (a few MiB of float64, in cache)
STAGE_BYTES = 8 << 20  # CPU update: centred rows per pooled-scatter Gram product (pass 1 at d = 512: 0.67-0.68 s
# with 2048 rows staged, 0.73 s with 8192, 2-core Xeon; at d = 128 8192 rows were best, at 2048 it made no odds)
SYNC_BYTES = 64 << 20  # all_reduce: class means summed across ranks this many bytes at a time


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
        "auto": on the CPU, kernels taken class group by class group in cache (:meth:`_update_host`); else torch's.
        "torch": the torch code path everywhere, as a GPU runs it (tests compare the two on the CPU).
    classes:
        The classes that will have samples, when known up front (e.g. from the labels): their rows are allocated
        once, in order. Others are added as they arrive either way.
    total_moments:
        When some classes only are tracked, also keep ``zz_total`` (the total coding rate needs it). False: not
        even that, for the collapse metrics alone (``classes=[]``), which need no unit-feature product at all.
    """

    def __init__(self, num_classes: int, dim: int, *, subspace_classes=None, device="cpu", backend: str = "auto",
                 classes=None, total_moments: bool = True):
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.device = torch.device(device)
        self.backend = backend
        self.host_kernels = self.device.type == "cpu" and backend == "auto"
        tracked = None
        if subspace_classes is not None:
            tracked = check_ids(subspace_classes, self.num_classes, "{classes}")
            if len(tracked) == self.num_classes:
                tracked = None  # every class: kept per row, like the default
        self.all_tracked = tracked is None
        self._tracked = None if tracked is None else np.asarray(tracked, dtype=np.int64)
        known = None if classes is None else check_ids(classes, self.num_classes, "classes")
        d, dev = self.dim, self.device
        self._rows = ClassRows(d, dev, known, moments=self.all_tracked)
        self.scatter = torch.zeros(d, d, dtype=F64, device=dev)
        self._zz = None if tracked is None else torch.zeros(len(tracked), d, d, dtype=F64, device=dev)
        keep_total = tracked is not None and (total_moments or len(tracked) > 0)
        self.zz_total = torch.zeros(d, d, dtype=F64, device=dev) if keep_total else None
        self._unsettled = False  # the CPU update accumulates the upper halves of zz and zz_total: see _settle
        self._work: dict[tuple, torch.Tensor] = {}  # the CPU update's buffers, kept from batch to batch

    # ------------------------------------------------------------------ the classes seen, in class order
    @property
    def class_ids(self) -> np.ndarray:
        """Sorted ids of the classes with a row (every class seen; classes given up front too)."""
        self._rows.compact()
        return self._rows.index_ids

    def _view(self, name: str) -> torch.Tensor:
        self._rows.compact()
        return self._rows.tensors()[name]

    @property
    def class_count(self) -> torch.Tensor:
        return self._view("count")

    @property
    def class_mean(self) -> torch.Tensor:
        return self._view("mean")

    @property
    def class_m2(self) -> torch.Tensor:
        return self._view("m2")

    @property
    def class_zero_norm(self) -> torch.Tensor:
        return self._view("zero_norm")

    # ------------------------------------------------------------------ dense views over all C classes
    @property
    def count(self) -> torch.Tensor:
        return self._rows.dense("count", self.num_classes)

    @property
    def mean(self) -> torch.Tensor:
        """(C, d): C x d float64, for small C (the analysis reads ``class_mean``)."""
        return self._rows.dense("mean", self.num_classes)

    @property
    def m2(self) -> torch.Tensor:
        return self._rows.dense("m2", self.num_classes)

    @property
    def zero_norm(self) -> torch.Tensor:
        return self._rows.dense("zero_norm", self.num_classes)

    @property
    def zz(self) -> torch.Tensor:
        """The tracked classes' moments, in ``subspace_classes`` order (all C classes when all are tracked)."""
        self._settle()
        if self._zz is not None:
            return self._zz
        return self._rows.dense("zz", self.num_classes)

    @property
    def subspace_classes(self) -> list[int]:
        return list(range(self.num_classes)) if self._tracked is None else self._tracked.tolist()

    def moments_of(self, c: int) -> torch.Tensor | None:
        """``zz`` of class ``c`` (a view; zeros for a tracked class without samples), None when not tracked."""
        self._settle()
        if self._tracked is None:
            row = int(self._rows.find(np.array([c]))[0])
            return self._rows.zz[row] if row >= 0 else torch.zeros(self.dim, self.dim, dtype=F64, device=self.device)
        slot = int(np.searchsorted(self._tracked, c))
        if slot < len(self._tracked) and self._tracked[slot] == c:
            assert self._zz is not None
            return self._zz[slot]
        return None

    def _slots(self, classes: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Where the moments of ``classes`` (rows ``rows``) go: rows of ``ClassRows.zz`` when every class is
        tracked, else slots of the tracked list (-1: not tracked)."""
        if self._tracked is None:
            return rows
        if not len(self._tracked):
            return np.full(len(classes), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._tracked, classes), len(self._tracked) - 1)
        return np.where(self._tracked[pos] == classes, pos, -1)

    def _moment_store(self) -> torch.Tensor:
        return self._rows.zz if self._zz is None else self._zz

    def _settle(self) -> None:
        """Complete the upper halves the CPU update left (:func:`~nc_probe.stats.gram.settle`), once, before a read."""
        if self._unsettled:
            for t in (self._moment_store(), self.zz_total):
                if t is not None:
                    with torch.inference_mode(t.is_inference()):  # made during an extraction's inference mode
                        settle(t)
            self._unsettled = False

    # ------------------------------------------------------------------ accumulation
    def update(self, features, labels) -> ClassStats:
        """Add one batch: ``features`` (n, d), ``labels`` (n,) integers in ``[0, C)``. Returns self."""
        if self.host_kernels:
            return self._update_host(features, labels)
        dev = self.device
        h = torch.as_tensor(features).to(dev, F64)
        h = h.reshape(len(h), -1 if h.numel() else self.dim)  # an empty batch has no -1 to infer
        y = torch.as_tensor(labels).to(dev, torch.long).reshape(-1)
        if self._empty_batch(h.shape, len(y)):
            return self
        self._check_labels(int(y.min()), int(y.max()))
        y, order = torch.sort(y, stable=True)
        h = h[order]
        classes, counts = torch.unique_consecutive(y, return_counts=True)
        present = classes.cpu().numpy()
        rows = self._rows.rows_for(present)
        inv = torch.repeat_interleave(torch.arange(len(classes), device=dev), counts)
        bmean = torch.zeros(len(classes), self.dim, dtype=F64, device=dev).index_add_(0, inv, h)
        bmean /= counts.to(F64)[:, None]
        centered = h - bmean[inv]
        bm2 = torch.zeros(len(classes), dtype=F64, device=dev).index_add_(0, inv, centered.square().sum(1))
        self._merge_moments(rows, counts, bmean, bm2, gram(centered))
        del centered

        z, zero = unit_rows(h)
        r = torch.from_numpy(rows).to(dev)
        if bool(zero.any()):
            self._rows.zero_norm.index_add_(0, r[inv[zero]], torch.ones_like(y[zero]))
        del h
        if self.zz_total is not None:
            gram_into(self.zz_total, z)
        starts = (torch.cumsum(counts, 0) - counts).tolist()
        store = self._moment_store()
        for slot, s, n in zip(self._slots(present, rows).tolist(), starts, counts.tolist()):
            if slot >= 0:
                gram_into(store[slot], z[s : s + n])
        return self

    def _update_host(self, features, labels) -> ClassStats:
        """``update`` on the CPU with torch's kernels (every core; numpy's elementwise ones use one). Rows are
        sorted by class and taken in groups of consecutive classes of about ``GROUP_ROWS`` rows, each gathered, cast,
        centred and normalised while in cache; the centred rows are staged for one Gram product per ``STAGE_BYTES`` of
        rows, each tracked class's unit rows go to one (upper halves: see :meth:`_settle`). Same formulas as the
        torch path, only the summation order differs."""
        # long: one loop over cache-sized groups of classes does every statistic while the group is in cache;
        # splitting it into functions per statistic would gather and cast each group's rows several times.
        a = torch.from_numpy(host_rows(features, self.dim))
        y = host_labels(labels)
        if self._empty_batch(tuple(a.shape), len(y)):
            return self
        d = self.dim
        self._check_labels(int(y.min()), int(y.max()))
        order = np.argsort(y, kind="stable")
        ys = y[order]
        cuts = np.flatnonzero(ys[1:] != ys[:-1]) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [len(ys)]])
        present = ys[starts]  # the batch's classes, ascending
        bcount = ends - starts
        rows = self._rows.rows_for(present)
        slots = self._slots(present, rows)
        zz = self._moment_store()
        kb = len(present)
        bmean = torch.zeros(kb, d, dtype=F64)
        bm2 = torch.zeros(kb, dtype=F64)
        bscatter = torch.zeros(d, d, dtype=F64)
        zero_norm = torch.zeros(kb, dtype=torch.long)
        units = self.zz_total is not None or bool((slots >= 0).any())  # anything to do with the unit rows
        stage = self._buffer("stage", min(len(a), max(1024, STAGE_BYTES // (8 * d))), F64)
        order_t = torch.from_numpy(order)
        count_t = torch.from_numpy(bcount)
        span = torch.from_numpy(np.repeat(np.arange(kb), bcount))  # each sorted row's class, as a batch position
        # reused buffers: a fresh float64 tensor per group cost as much again in page faults as the copy into it
        gathered = self._buffer("gathered", min(len(a), GROUP_ROWS), a.dtype)
        rows64 = gathered if a.dtype == F64 else self._buffer("rows64", len(gathered), F64)
        fill = 0
        i = 0
        while i < kb:
            j = i + 1 + int(np.searchsorted(ends[i + 1:], starts[i] + GROUP_ROWS, side="right"))
            s0, s1 = int(starts[i]), int(ends[j - 1])
            m = s1 - s0
            if m <= len(gathered):  # ours to scale in place
                h = rows64[:m]
                torch.index_select(a, 0, order_t[s0:s1], out=gathered[:m])
                if rows64 is not gathered:  # float32 rows, cast (float64 ones were gathered in place)
                    h.copy_(gathered[:m])
            else:  # one class larger than a group
                h = a.index_select(0, order_t[s0:s1]).to(F64)
            inv = span[s0:s1] - i  # the rows' classes within the group
            mean = bmean[i:j].index_add_(0, inv, h).div_(count_t[i:j].to(F64)[:, None])  # bmean starts at zeros
            if m > len(stage) - fill and fill:
                gram_upper_into(bscatter, stage[:fill])
                fill = 0
            x = stage[fill : fill + m] if m <= len(stage) else torch.empty(m, d, dtype=F64)
            spans = list(zip(range(i, j), (starts[i:j] - s0).tolist(), (ends[i:j] - s0).tolist()))
            for p, l0, l1 in spans:
                torch.sub(h[l0:l1], mean[p - i], out=x[l0:l1])  # broadcast: no group-sized copy of the means
            bm2[i:j].index_add_(0, inv, sq := torch.linalg.vector_norm(x, dim=1).square_())
            zero = normalize_rows_(h) if units else zero_rows_centred(h, sq, mean, inv)
            if m <= len(stage):
                fill += m
            else:
                gram_upper_into(bscatter, x)
            del x
            if bool(zero.any()):
                zero_norm[i:j] += torch.bincount(inv[zero], minlength=j - i)
            if self.zz_total is not None:
                gram_upper_into(self.zz_total, h)
            for p, l0, l1 in spans:
                if slots[p] >= 0:
                    gram_upper_into(zz[slots[p]], h[l0:l1])
            self._unsettled |= units
            i = j
        if fill:
            gram_upper_into(bscatter, stage[:fill])
        settle(bscatter)
        self._merge_moments(rows, count_t, bmean, bm2, bscatter)
        self._rows.zero_norm[torch.from_numpy(rows)] += zero_norm
        return self

    def _buffer(self, name: str, rows: int, dtype: torch.dtype) -> torch.Tensor:
        """A ``rows x d`` work buffer kept between batches (fresh ones cost 2.5 s of page faults at N = 1M)."""
        buf = self._work.get((name, dtype))
        if buf is None or len(buf) < rows:
            buf = self._work[(name, dtype)] = torch.empty(rows, self.dim, dtype=dtype)
        return buf[:rows]

    def _check_labels(self, lo: int, hi: int) -> None:
        if lo < 0 or hi >= self.num_classes:
            raise IndexError(f"label {lo if lo < 0 else hi} is outside 0..{self.num_classes - 1}")

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
        """Add the statistics of ``other`` (same C, d and tracked classes; any classes seen) into self."""
        if (other.num_classes, other.dim) != (self.num_classes, self.dim) or not (
                (self._tracked is None and other._tracked is None)
                or (self._tracked is not None and other._tracked is not None
                    and np.array_equal(self._tracked, other._tracked))):
            raise ValueError("can only merge ClassStats with the same classes, dimension and tracked classes")
        self._settle()
        other._settle()
        dev = self.device
        ids = other.class_ids
        rows = self._rows.rows_for(ids)
        self._merge_moments(rows, other.class_count.to(dev), other.class_mean.to(dev), other.class_m2.to(dev),
                            other.scatter.to(dev))
        r = torch.from_numpy(rows).to(dev)
        self._rows.zero_norm[r] += other.class_zero_norm.to(dev)
        if self._zz is None:
            self._rows.zz[r] += other._rows.zz.to(dev)
        else:
            assert other._zz is not None
            self._zz += other._zz.to(dev)
        if self.zz_total is not None and other.zz_total is not None:
            self.zz_total += other.zz_total.to(dev)
        return self

    def _merge_moments(self, rows: np.ndarray, count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor,
                       scatter: torch.Tensor) -> None:
        """Chan et al. into ``rows``: M2_ab = M2_a + M2_b + n_a n_b / (n_a + n_b) delta delta^T, delta = mean_b -
        mean_a (the pooled scatter takes the outer products, each row's m2 their traces)."""
        R, dev = self._rows, self.device
        self.scatter += scatter.to(dev)
        step = max(1, SYNC_BYTES // (8 * max(self.dim, 1)))  # classes at a time: a few K x d copies would be GBs
        for s in range(0, len(rows), step):
            r = torch.from_numpy(rows[s:s + step]).to(dev)
            n_a = R.count[r].to(F64)
            n_b = count[s:s + step].to(dev, F64)
            n = n_a + n_b
            safe = torch.where(n > 0, n, torch.ones_like(n))
            mean_a = R.mean[r]
            delta = mean[s:s + step].to(dev) - mean_a
            weight = n_a * n_b / safe
            seen = torch.nonzero(weight > 0).flatten()  # classes new on either side add nothing to the scatter
            self.scatter += gram(delta[seen] * weight[seen].sqrt()[:, None])
            R.m2[r] = R.m2[r] + (m2[s:s + step].to(dev) + weight * delta.square().sum(1))
            R.mean[r] = mean_a + delta * (n_b / safe)[:, None]
            R.count[r] = R.count[r] + count[s:s + step].to(dev)

    def all_reduce(self, group=None) -> ClassStats:
        """Combine the statistics of every rank of ``torch.distributed`` in place (a no-op in one process)."""
        from nc_probe.core import distributed

        return distributed.sync(self, group)

    def sync_steps(self) -> Generator[tuple[str, Any], Any, None]:
        """The :func:`nc_probe.core.distributed.sync` protocol. Ranks may have seen different classes: each first takes
        rows for the union of all ranks' classes, in class order (the same rows everywhere). Means and scatters
        are not sums: each rank learns the global class means (from summed counts and sums, a block of classes at
        a time), re-centres its scatter and traces on them (exact, no loss of accuracy near collapse), then
        everything is summed."""
        self._settle()
        parts = yield "gather", self._rows.index_ids.copy()
        self._rows.rows_for(np.unique(np.concatenate(parts)))
        self._rows.compact()
        R = self._rows
        n_local = R.count.to(F64)
        total = R.count.clone()
        yield "sum", [total]
        n_total = total.to(F64)
        step = max(1, SYNC_BYTES // (8 * max(self.dim, 1)))
        for s in range(0, R.k, step):
            nl = n_local[s:s + step]
            sums = R.mean[s:s + step] * nl[:, None]
            yield "sum", [sums]
            nt = n_total[s:s + step]
            g_mean = sums / torch.where(nt > 0, nt, torch.ones_like(nt))[:, None]
            delta = R.mean[s:s + step] - g_mean
            delta[nl == 0] = 0
            self.scatter += gram(delta * nl.sqrt()[:, None])
            R.m2[s:s + step] += nl * delta.square().sum(1)
            R.mean[s:s + step] = g_mean
        yield "sum", [self.scatter, R.m2, R.zero_norm, self._moment_store()] + (
            [] if self.zz_total is None else [self.zz_total])
        R.count.copy_(total)

    def truncated(self, num_classes: int) -> ClassStats:
        """These statistics for the classes below ``num_classes`` (exact when the others have no samples)."""
        C = num_classes
        ids = self.class_ids
        sel = np.flatnonzero(ids < C)
        tracked = None if self._tracked is None else [int(c) for c in self._tracked if c < C]
        out = ClassStats(C, self.dim, subspace_classes=tracked, device=self.device, backend=self.backend,
                         classes=ids[sel], total_moments=self.zz_total is not None or self.all_tracked)
        s = torch.from_numpy(sel).to(self.device)
        for name in ("count", "mean", "m2", "zero_norm"):
            out._rows.tensors()[name].copy_(self._rows.tensors()[name][s])
        out.scatter.copy_(self.scatter)
        targets = ids[sel].tolist() if out._zz is None else out.subspace_classes
        store = out._moment_store()
        for slot, c in enumerate(targets):
            m = self.moments_of(c)
            if m is not None:
                store[slot].copy_(m)
        total = self.second_moment_total()
        if out.zz_total is not None and total is not None:
            out.zz_total.copy_(total)
        return out

    # ------------------------------------------------------------------ views used by the metrics
    @property
    def total(self) -> int:
        return int(self._rows.count[: self._rows.k].sum())

    def second_moment_total(self) -> torch.Tensor | None:
        """``sum_i z_i z_i^T`` over all samples (None when not kept: ``total_moments=False``)."""
        self._settle()
        if self.zz_total is not None:
            return self.zz_total
        if not self.all_tracked:
            return None
        return self._rows.zz[: self._rows.k].sum(0)

    def state_dict(self) -> dict:
        """Plain tensors, e.g. to save with ``torch.save`` or send between processes (dense over the C classes:
        for small C)."""
        self._settle()
        return {"num_classes": self.num_classes, "dim": self.dim, "subspace_classes": list(self.subspace_classes),
                **{k: getattr(self, k) for k in ("count", "mean", "m2", "scatter", "zero_norm", "zz", "zz_total")}}

    def to_numpy(self) -> dict:
        return {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in self.state_dict().items()}
