"""Pass 2's decisions taken during pass 1, certified against the final class means.

Pass 2 exists because the nearest class mean is decided against the final means, known only after pass 1. Pass 1
can instead score each chunk, right after adding it, against the running means of everything read so far: the float32
screen (:meth:`~nc_probe.stats.screen.Float32Screen.margins`) gives each row its nearest mean and ``slack``, a lower
bound on the exact gap ``D_c - D_ncc`` to every other class (``D_c = ||mu_c||^2 - 2 h.mu_c``), less the float64
rule's rounding. When a class mean then moves by at most ``delta`` to its final value, every ``D_c`` moves by at most
``delta (2 ||h|| + ||mu_final|| + ||mu_then||)``; a row whose slack exceeds twice that, plus the float64 rounding of
the final scores, has the same float64 decision against the final means. Only the other rows (near a tie, or read
before a class had any sample) are read again, one by one, and scored in float64. The classifier's decisions do not
depend on the means: they are final in pass 1 (float64 for the rows its screen cannot decide). The PCA sample's rows
are kept as pass 1 reads them. So no second pass over the file: on the 2-core Xeon at N = 1M, d = 512, C = 100 this
saves pass 2's read and loop (about 0.5 s of 1.8 s; the screen's products move into pass 1).

Used on the CPU when pass 1 runs, every class is scored by the nearest-mean rule, W is small enough to be held whole
(or absent, with no stored logits), nothing else rides pass 2 (probe, Mahalanobis rule, a subspace group), and the
per-row record (32 bytes a row) fits an eighth of the memory budget; otherwise pass 2 runs as before.
"""

from __future__ import annotations

import numpy as np
import torch

from nc_probe.extract.store import FeatureStore
from nc_probe.stats import predictions
from nc_probe.stats.class_stats import ClassStats
from nc_probe.stats.predictions import Classifier, PredictionTally, Predictor
from nc_probe.stats.screen import Float32Screen, screened_rows

F64 = torch.float64
BLOCK = 4096  # rows screened at a time
ROW_BYTES = 32  # the record per row: position, slack, norm bound, classifier class, chunk
MAX_COLUMN_BYTES = 64 << 20  # the means and W, float64, rebuilt into a screen once per chunk


def usable(store: FeatureStore, stats: ClassStats, ids: np.ndarray, budget: int, *, others: bool) -> bool:
    """Whether this run can take its pass-2 decisions in pass 1 (see the module docstring)."""
    if not stats.host_kernels or others or store.has_logits or store.has_predictions:
        return False
    V = 0 if store.W is None else len(store.W)
    whole = predictions.WHOLE_BYTES  # read now: W held whole is what the joint screen needs
    if V * stats.dim * 8 > min(whole, MAX_COLUMN_BYTES) or (len(ids) + V) * stats.dim * 8 > MAX_COLUMN_BYTES:
        return False
    return store.num_samples * ROW_BYTES <= budget // 8


class EarlyDecisions:
    """The pass-1 record of every row's screened decisions (see the module docstring)."""

    def __init__(self, store: FeatureStore, stats: ClassStats, ids: np.ndarray, keep: np.ndarray,
                 sample_rows: np.ndarray):
        n = store.num_samples
        self.store, self.stats, self.keep = store, stats, keep
        self.ids = np.asarray(ids)
        self.classifier = None if store.W is None else Classifier(store.W, store.b)
        self.position = np.full(n, -1, dtype=np.int32)  # nearest mean's position among ids; -1: not counted
        self.slack = np.full(n, -np.inf)
        self.norm = np.zeros(n)
        self.model = np.full(n, -1, dtype=np.int64)  # classifier class; -1: decide later
        self.chunk = np.zeros(n, dtype=np.int32)
        self.means: list[torch.Tensor | None] = []  # the means each chunk was scored against
        self.sample_rows = np.asarray(sample_rows)
        self.sample: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def add(self, start: int, features: np.ndarray, labels: np.ndarray) -> None:
        """Score rows ``[start, start + len)`` (as read; rows of classes left out are not counted) against the
        running means, after the statistics took them."""
        stop = start + len(labels)
        lo, hi = np.searchsorted(self.sample_rows, [start, stop])
        h = torch.from_numpy(np.asarray(features))
        for r in self.sample_rows[lo:hi].tolist():
            i = r - start
            self.sample.append((r, h[i:i + 1].to(F64, copy=True), torch.from_numpy(labels[i:i + 1].copy())))
        self.chunk[start:stop] = len(self.means)
        counted = self.keep[labels]
        self.position[start:stop][~counted] = -1
        means = self._running_means()
        self.means.append(means)
        if means is None:  # a class without samples yet: these rows are scored after pass 1
            self.position[start:stop][counted] = 0
            return
        c = self.classifier
        sq = means.square().sum(1)
        cols = means.T if c is None else torch.cat([means, c.W64]).T
        screen = Float32Screen(cols, sq, len(means), None if c is None else c.b64,
                               rounded_input=h.dtype == torch.float64)
        for s in range(0, len(h), BLOCK):
            block = h[s:s + BLOCK]
            at = slice(start + s, start + s + len(block))
            rows32 = screened_rows(block, screen.rounded_input)
            found = None if rows32 is None else screen.margins(rows32)
            mine = counted[s:s + len(block)]
            if found is None:
                self.position[at][mine] = 0  # slack stays -inf: decided after pass 1
                continue
            ncc, slack, model, unsure, hn = found
            if model is not None and bool(unsure.any()):
                model[unsure] = c.argmax(block[unsure].to(F64))  # type: ignore[union-attr]
            self.position[at] = np.where(mine, ncc.numpy(), -1)
            self.slack[at] = slack.numpy()
            self.norm[at] = hn.numpy()
            if model is not None:
                self.model[at] = model.numpy()

    def _running_means(self) -> torch.Tensor | None:
        stats = self.stats
        pos = torch.from_numpy(np.searchsorted(stats.class_ids, self.ids))
        if bool((stats.class_count[pos] == 0).any()):
            return None
        return stats.class_mean[pos].clone()

    def tally(self, stats: ClassStats, pca=None) -> PredictionTally:
        """The tally of pass 2 against the final means of ``stats``: certified rows as decided, the others read
        and scored in float64; the PCA sample fed to ``pca``."""
        final = stats.class_mean[torch.from_numpy(np.searchsorted(stats.class_ids, self.ids))]
        c = self.classifier
        predictor = Predictor(final, torch.from_numpy(self.ids), None if c is None else c.W,
                              None if c is None else c.b)
        d = stats.dim
        mf = float(torch.linalg.vector_norm(final, dim=1).max())
        gamma64 = 4 * (d + 2) * 2.0**-53  # twice the float64 rounding of a product of d terms, and of the squares
        need = np.zeros(len(self.position), dtype=bool)
        for k, means in enumerate(self.means):
            rows = self.chunk == k
            if means is None:
                need |= rows
                continue
            delta = float(torch.linalg.vector_norm(final - means, dim=1).max()) * (1 + 1e-9)
            mn = float(torch.linalg.vector_norm(means, dim=1).max())
            hn = self.norm[rows]
            change = delta * (2 * hn + mf + mn)
            rounding = gamma64 * hn * mf + gamma64 * mf * mf
            need[rows] = ~(self.slack[rows] > 2 * change + 2 * rounding)
        counted = self.position >= 0
        need &= counted
        again = np.flatnonzero(need | (counted & (self.model < 0) & (c is not None)))
        if len(again):
            h = torch.from_numpy(self.store.read_at("features", again)).to(F64)
            ncc, model = predictor.positions(h)
            self.position[again] = np.where(need[again], ncc.numpy(), self.position[again])
            if model is not None:
                self.model[again] = np.where(self.model[again] < 0, model.numpy(), self.model[again])
        self.rescored = len(again)
        labels = self.store.labels()
        tally = PredictionTally(stats.num_classes)
        kept = np.flatnonzero(counted)
        for s in range(0, len(kept), 1 << 20):
            part = kept[s:s + (1 << 20)]
            model = None if c is None else torch.from_numpy(self.model[part])
            tally.add(torch.from_numpy(labels[part]), torch.from_numpy(self.ids[self.position[part]]), model)
        if pca is not None:
            for row, h, y in self.sample:
                pca.add(row, h, y)
        return tally.sync()
