"""The report's 2-D PCA sample: a deterministic subsample of rows projected on the top-2 principal axes.

The subsample is drawn from the row numbers of the whole data set, so that under torchrun every rank projects the
rows of the sample it holds and the gathered points, in row order, are those of one process."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nc_probe.core import distributed
from nc_probe.extract.store import FeatureStore, RowShare
from nc_probe.stats.class_stats import ClassStats

PCA_POINTS = 2000  # rows of the deterministic subsample whose 2-D PCA projection the report keeps (for plots)


@dataclass
class TotalCovariance:
    """``sigma`` (Sigma_T) of the analysed rows about their sample mean ``center``, and its eigendecomposition,
    computed once for the PCA axes, the layer's numerical rank and the label-free measures (three d x d solves of
    the same matrix before: 0.1-0.15 s at d = 512 on the 2-core Xeon, a tenth of the collapse metrics' run)."""

    sigma: torch.Tensor
    center: torch.Tensor
    _spectrum: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)

    def spectrum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues of ``sigma``, descending (roundoff negatives kept), and its eigenvectors in that order."""
        if self._spectrum is None:
            lam, vec = torch.linalg.eigh(self.sigma)
            self._spectrum = lam.flip(0), vec.flip(1)
        return self._spectrum


def total_covariance(stats: ClassStats, ids, block_bytes: int = 64 << 20) -> TotalCovariance:
    """Sigma_T of the rows of classes ``ids`` (sorted): their covariance about their sample mean, the within-class
    scatter plus the count-weighted scatter of the class means, summed a block of classes at a time (no K x d copy
    of the means)."""
    pos = torch.as_tensor(np.searchsorted(stats.class_ids, ids), device=stats.device)
    n = stats.class_count[pos].to(torch.float64)
    means = stats.class_mean
    N = n.sum()
    step = max(1, block_bytes // (8 * max(stats.dim, 1)))
    center = torch.zeros(stats.dim, dtype=torch.float64, device=stats.device)
    for s in range(0, len(pos), step):
        center = center + n[s:s + step] @ means[pos[s:s + step]]
    center = center / N
    cov = stats.scatter / N
    for s in range(0, len(pos), step):
        dm = means[pos[s:s + step]] - center
        cov = cov + (dm.T * (n[s:s + step] / N)) @ dm
    return TotalCovariance(cov, center)


class PCASample:
    """The 2-D PCA of the features, kept for a deterministic subsample of at most ``PCA_POINTS`` rows.

    The axes are the top-2 eigenvectors of the total covariance of all rows (from the float64 statistics:
    within-class scatter plus the count-weighted scatter of the class means); pass 2 projects the sampled rows.
    ``total``: that covariance, when computed already (:func:`total_covariance`).
    """

    def __init__(self, stats: ClassStats, ids, store: FeatureStore, limit: int = PCA_POINTS,
                 total: TotalCovariance | None = None):
        total = total_covariance(stats, ids) if total is None else total
        self.center: torch.Tensor = total.center
        lam, vec = total.spectrum()
        lam, vec = lam.clamp_min(0), vec[:, :2]
        vec = vec * torch.where(vec.gather(0, vec.abs().argmax(0, keepdim=True)) < 0, -1.0, 1.0)  # fixed signs
        if vec.shape[1] < 2:
            vec = torch.cat([vec, torch.zeros_like(vec)], 1)
        self.axes = vec
        spread = float(lam.sum())
        self.ratio = [float(v) / spread if spread > 0 else 0.0 for v in lam[:2].tolist()]
        self.ratio += [0.0] * (2 - len(self.ratio))
        share = store.share or RowShare(0, 1, store.num_samples)
        rng = np.random.default_rng(0)
        chosen = np.sort(rng.choice(share.total, size=min(limit, share.total), replace=False))
        self.global_rows, self.rows = share.local(chosen, store.num_samples)  # both ascending
        self.points: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.taken: list[np.ndarray] = []

    def add(self, start: int, h: torch.Tensor, y: torch.Tensor) -> None:
        lo, hi = np.searchsorted(self.rows, [start, start + len(h)])
        if hi > lo:
            local = torch.as_tensor(self.rows[lo:hi] - start, device=h.device)
            self.points.append(((h[local] - self.center) @ self.axes).cpu().numpy())
            self.labels.append(y[local.cpu()].numpy())
            self.taken.append(self.global_rows[lo:hi])

    def sync_steps(self) -> Generator[tuple[str, Any], Any, None]:
        """The :func:`nc_probe.core.distributed.sync` protocol: every rank's sampled rows, put in row order."""
        parts = yield "gather", self._local()
        pts, labels, rows = (np.concatenate([p[i] for p in parts]) for i in range(3))
        order = np.argsort(rows, kind="stable")
        self.points, self.labels, self.taken = [pts[order]], [labels[order]], [rows[order]]

    def _local(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pts = np.concatenate(self.points) if self.points else np.zeros((0, 2))
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, dtype=np.int64)
        rows = np.concatenate(self.taken) if self.taken else np.zeros(0, dtype=np.int64)
        return pts, labels, rows

    def result(self) -> dict:
        """The sample of all ranks (synced), as the report keeps it."""
        distributed.sync(self)
        pts, labels, _ = self._local()
        return {"points": [[float(f"{a:.5g}"), float(f"{b:.5g}")] for a, b in pts],
                "labels": [int(v) for v in labels],
                "explained_variance_ratio": self.ratio, "num_samples": int(len(pts)), "seed": 0}
