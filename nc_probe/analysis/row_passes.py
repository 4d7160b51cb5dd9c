"""The passes over a store's rows other than pass 2: pass 1 (the class statistics), the subspace groups' own
passes, the nearest-subspace pass, and the clock a rule riding a pass keeps."""

from __future__ import annotations

import time

import numpy as np
import torch

from nc_probe.core import distributed
from nc_probe.core.errors import InputError
from nc_probe.core.progress import step
from nc_probe.core.settings import MetricSettings
from nc_probe.extract.store import FeatureStore
from nc_probe.metrics import nearest_subspace
from nc_probe.metrics.unit_rows import unit_rows
from nc_probe.stats.class_stats import ClassStats
from nc_probe.stats.subspaces import SubspaceAccumulator


def pass1(store: FeatureStore, stats: ClassStats, rows: int, keep: np.ndarray, digest=None) -> None:
    """Accumulate ``stats`` over the rows of the kept classes. While ``digest`` (the file's sha256, on the pool's
    thread) runs, torch's CPU kernels use one thread fewer: hashing takes a core (2.1 s for a 2 GB file on the 2-core
    Xeon), and MKL's threads, each waiting for the slowest, ran pass 1 at 1M rows 2-3 s slower beside it.

    Pass 1 is the first pass over the rows, so it also stops at the first NaN or Inf (one InputError naming the
    row). It does not scan each chunk for them (a pass over every row: 2% of the collapse metrics' run at d = 512):
    a NaN or Inf in any row makes the pooled scatter's diagonal non-finite (its class mean becomes non-finite, so
    every row of the class centres to NaN or Inf), and only then is the chunk scanned for the row; if it scans
    clean, finite entries overflowed when squared, which is an InputError too (no metric would be finite). When rows
    of left-out classes are dropped, every chunk is scanned before use, as other passes do (pass 2's observers see
    those rows)."""
    drop = not bool(keep.all())
    scan = drop  # dropped rows never reach the statistics, but pass 2's observers see them
    threads = torch.get_num_threads()
    try:
        for chunk in store.iter_chunks(rows, reuse=True, check_finite=False):
            busy = stats.host_kernels and digest is not None and not digest.done() and threads > 1
            if torch.get_num_threads() != threads - busy:
                torch.set_num_threads(threads - busy)
            h, y = np.asarray(chunk.features), chunk.labels
            if scan:
                store.check_finite(h, chunk.start)
            if drop:
                sel = keep[y]
                h, y = h[sel], y[sel]
            stats.update(torch.from_numpy(h), torch.from_numpy(y))
            if not scan and not bool(torch.isfinite(stats.scatter.diagonal()).all()):
                store.check_finite(np.asarray(chunk.features), chunk.start)  # raises, naming the row
                raise InputError(  # it scanned clean: finite rows whose squares overflow float64
                    f"features are too large for float64 statistics: squares of entries up to "
                    f"{float(np.abs(chunk.features).max()):.3g} overflow", path=store.source,
                    fix="scale the features down (e.g. divide them by their largest magnitude)")
            del chunk  # before the next read: one chunk in memory at a time
    finally:
        torch.set_num_threads(threads)


class GroupFeeder:
    """Feeds one group's accumulator from rows read by a pass (pass 2, or a subspace pass of its own)."""

    def __init__(self, acc: SubspaceAccumulator):
        self.acc = acc

    def add(self, start: int, h: torch.Tensor, y: torch.Tensor) -> None:
        inside = self.acc.members(y)  # only the group's rows are normalized (a few classes of many)
        if inside is not None:
            h, y = h[inside.to(h.device)], y[inside]
        if len(y):
            z, _ = unit_rows(h)
            self.acc.update(z, y)


def group_feeder(splan, index: int, stats: ClassStats) -> GroupFeeder | None:
    if splan.in_pass1 or index >= len(splan.groups):
        return None
    return GroupFeeder(SubspaceAccumulator(splan.groups[index], stats.dim, stats.device))


def subspace_groups(store: FeatureStore, stats: ClassStats, splan, results, s: MetricSettings, rows: int,
                     first: GroupFeeder | None) -> None:
    """Every group's spectra: the first was fed by pass 2; each further group is read in a pass of its own."""
    angle_set = set(splan.angle_classes)
    for index in range(len(splan.groups)):
        feeder = first if index == 0 else group_feeder(splan, index, stats)
        assert feeder is not None
        if index > 0:
            for chunk in store.iter_chunks(rows, reuse=True):
                feeder.add(chunk.start, torch.from_numpy(np.asarray(chunk.features)),
                           torch.from_numpy(chunk.labels))
                del chunk
        distributed.sync(feeder.acc)
        results.add_group(feeder.acc, s, angle_set)
        feeder.acc = None  # type: ignore[assignment]  # a group's rows are freed before the next group is read


def nearest_subspace_accuracy(store: FeatureStore, results, ids: np.ndarray, keep: np.ndarray,
                              rows: int) -> float | None:
    """``acc_nearest_subspace``: one more pass, scoring every row against the classes' nearest-subspace bases
    (which exist only after the spectra; None when they were not kept, see ``nearest_subspace.wanted``)."""
    if not results.keep_ns:
        return None
    step("nearest-subspace pass")
    tally = nearest_subspace.NearestSubspaceTally([results.spectra[c].ns_basis for c in ids], ids,
                                                  None if keep.all() else keep)
    for chunk in store.iter_chunks(rows, reuse=True):
        tally.add(chunk.start, torch.from_numpy(np.asarray(chunk.features)), torch.from_numpy(chunk.labels))
        del chunk
    distributed.sync(tally)
    return tally.accuracy


class Clocked:
    """A pass observer whose time is summed, so that ``report.timings`` names each rule's share of the pass it
    rides."""

    def __init__(self, observer):
        self.observer = observer
        self.seconds = 0.0

    def add(self, start: int, h: torch.Tensor, y: torch.Tensor) -> None:
        t = time.perf_counter()
        self.observer.add(start, h, y)
        self.seconds += time.perf_counter() - t


def timed(fn, *args):
    t = time.perf_counter()
    return fn(*args), time.perf_counter() - t
