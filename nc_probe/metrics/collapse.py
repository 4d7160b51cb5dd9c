"""Neural-collapse metrics NC1-NC3 on raw features (``docs/metrics.md``, "Collapse metrics").

Pure functions of float64 arrays taken from :class:`~nc_probe.stats.class_stats.ClassStats`; only classes with samples
are passed in. NC4 and the accuracies need a second pass over the features: :mod:`nc_probe.stats.predictions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nc_probe.metrics.literature import LogEnergy
from nc_probe.metrics.pairs import MatrixSink, PairSummary, Tile, sweep

EPS64 = np.finfo(np.float64).eps


def centered_means(means: np.ndarray) -> np.ndarray:
    """``M`` (d x C): class means minus the class-balanced global mean ``mu_G = (1/C) sum_c mu_c``."""
    return (means - means.mean(0)).T


def nc1(scatter: np.ndarray, total: int, M: np.ndarray) -> float:
    """``Tr(Sigma_W Sigma_B^+) / C`` with ``Sigma_W = scatter / N`` and ``Sigma_B = M M^T / C``.

    ``Sigma_B^+`` comes from the thin SVD of ``M`` (rank <= C-1, so the d x d pseudo-inverse is never formed);
    singular values of ``Sigma_B`` below ``max(d, C) * eps64 * s_max`` are dropped, as the spec says.
    """
    d, C = M.shape
    U, s, _ = np.linalg.svd(M, full_matrices=False)
    sb = s**2 / C
    if sb.size == 0 or sb[0] == 0:
        return float("inf")
    keep = sb > max(d, C) * EPS64 * sb[0]
    U, sb = U[:, keep], sb[keep]
    # diag(U^T Sigma_W U) through one BLAS product (an einsum over i, k, j loops d^2 C times in C, 6 s at C=1000)
    quad = np.einsum("ij,ij->j", U, (scatter / total) @ U)
    return float(quad @ (1.0 / sb) / C)


def nc1_cdnv(M: np.ndarray, variances: np.ndarray) -> float:
    """Mean over pairs c<c' of ``(V_c + V_c') / (2 ||mu_c - mu_c'||^2)`` (Galanti et al. 2022).

    Distances come from the centered means ``M`` (d x C): centering removes a common offset before the Gram
    expansion, so it does not cancel catastrophically when the means sit far from the origin. Pairs of means that
    nearly coincide (distance^2 under 1e-3 of their squared norms) would still cancel, so they are recomputed as
    direct differences.
    """
    G = M.T @ M
    sq = np.diag(G)
    iu = np.triu_indices(len(sq), 1)
    dist2 = np.maximum(sq[iu[0]] + sq[iu[1]] - 2 * G[iu], 0)
    close = np.flatnonzero(dist2 < 1e-3 * (sq[iu[0]] + sq[iu[1]]))
    for a in np.unique(iu[0][close]):
        pairs = close[iu[0][close] == a]
        dist2[pairs] = np.square(M[:, iu[1][pairs]] - M[:, [a]]).sum(0)
    with np.errstate(divide="ignore"):
        ratio = (variances[iu[0]] + variances[iu[1]]) / (2 * dist2)
    return float(np.mean(ratio))


def _cosines(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Norms of the rows and their pairwise cosines (upper triangle, c<c')."""
    norms = np.linalg.norm(vectors, axis=1)
    unit = vectors / np.where(norms > 0, norms, 1)[:, None]
    cos = unit @ unit.T
    iu = np.triu_indices(len(vectors), 1)
    return norms, cos[iu]


def nc2(vectors: np.ndarray) -> dict[str, float]:
    """The four NC2 measures of rows ``vectors`` (C x d): equinorm, equiangle, maxangle and ETF distance."""
    C = len(vectors)
    norms, cos = _cosines(vectors)
    G = vectors @ vectors.T
    target = (np.eye(C) - np.ones((C, C)) / C) / np.sqrt(C - 1)
    gnorm = np.linalg.norm(G)
    return {
        "equinorm": float(norms.std() / norms.mean()) if norms.mean() > 0 else float("nan"),
        "equiangle": float(cos.std()),
        "maxangle": float(np.mean(np.abs(cos + 1.0 / (C - 1)))),
        "etf": float(np.linalg.norm(G / gnorm - target)) if gnorm > 0 else float("nan"),
    }


def nc3(W: np.ndarray, M: np.ndarray) -> float:
    """``|| W^T/||W||_F - M/||M||_F ||_F^2`` (W: C x d, M: d x C, same class order)."""
    return float(np.square(W.T / np.linalg.norm(W) - M / np.linalg.norm(M)).sum())


# ------------------------------------------------------------------------------------------ pairs, tile by tile
@dataclass
class PairCollapse:
    """The pair-based collapse metrics of one set of class vectors, and the summaries the report keeps."""

    metrics: dict
    cosine: PairSummary
    cdnv: PairSummary | None = None
    cosine_matrix: np.ndarray | None = None


def mean_pair_metrics(M: np.ndarray, variances: np.ndarray, *, keep_matrix: bool = False,
                      tile_rows: int | None = None, num_classes: int | None = None) -> PairCollapse:
    """nc1_cdnv, the NC2 measures of the centred means (columns of ``M``, d x C) and their log energy
    (``gnc2_log_*``), from one tiled sweep over their Gram matrix; with ``keep_matrix`` also the C x C cosines.
    ``num_classes``: when M holds some of the classes (the most frequent of many), the number of all of them, whose
    ``-1/(C-1)`` ``nc2_maxangle`` measures the cosines against.

    CDNV: distances come from the centred means' Gram (centring removes a common offset before the expansion, so it
    does not cancel when the means sit far from the origin); pairs that nearly coincide (distance^2 under 1e-3 of
    their squared norms) would still cancel, so they are recomputed as direct differences.
    """
    V = np.ascontiguousarray(M.T)
    sq = np.einsum("ij,ij->i", V, V)
    state = _Nc2Sweep(V, keep_matrix, num_classes=num_classes)
    energy = LogEnergy(V)
    cdnv = PairSummary(bounds=(1e-12, 1e12), extreme="largest", log=True)
    cdnv_sum = [0.0]

    def visit(tile: Tile, G: np.ndarray) -> None:
        energy.visit(tile, state.visit(tile, G))
        (i0, j0), (n, m) = (tile.i0, tile.j0), G.shape
        sa, sb = sq[i0:i0 + n, None], sq[None, j0:j0 + m]
        dist2 = np.maximum(sa + sb - 2 * G, 0)
        close = dist2 < 1e-3 * (sa + sb)
        if tile.mask is not None:
            close &= tile.mask
        r, c = np.nonzero(close)
        if len(r):
            dist2[r, c] = np.square(V[r + i0] - V[c + j0]).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            term = tile.values((variances[i0:i0 + n, None] + variances[None, j0:j0 + m]) / (2 * dist2))
        cdnv_sum[0] += float(term.sum())
        cdnv.add(term, tile.locate)

    sweep(V, visit, tile_rows)
    metrics = state.metrics()
    C = len(V)
    metrics = {"nc1_cdnv": cdnv_sum[0] / (C * (C - 1) / 2), **{f"{k}_M": v for k, v in metrics.items()},
               **energy.metrics()}
    return PairCollapse(metrics, state.cosine, cdnv, None if state.matrix is None else state.matrix.matrix)


def row_pair_metrics(vectors: np.ndarray, *, tile_rows: int | None = None,
                     num_classes: int | None = None) -> PairCollapse:
    """The four NC2 measures of rows ``vectors`` (C x d, e.g. the classifier's rows), from one tiled sweep
    (``num_classes`` as for :func:`mean_pair_metrics`)."""
    V = np.ascontiguousarray(vectors, dtype=np.float64)
    state = _Nc2Sweep(V, False, light=True, num_classes=num_classes)
    sweep(V, state.visit, tile_rows)
    return PairCollapse(state.metrics(), state.cosine)


class _Nc2Sweep:
    """Accumulates equiangle (std of pairwise cosines), maxangle (mean |cos + 1/(C-1)|) and the distance of the
    normalized Gram to the simplex ETF, tile by tile."""

    def __init__(self, V: np.ndarray, keep_matrix: bool, light: bool = False, num_classes: int | None = None):
        C = len(V)
        self.C = C
        self.ideal = 1.0 / ((num_classes or C) - 1)  # maxangle: cosines against -1/(C-1) of all the classes
        self.norms = np.linalg.norm(V, axis=1)
        self.safe = np.where(self.norms > 0, self.norms, 1.0)
        # ||G||_F from the d x d Gram: the same number, without the C x C matrix.
        self.gnorm = float(np.linalg.norm(V.T @ V))
        self.e_off = -1.0 / (C * np.sqrt(C - 1))
        self.e_diag = (1.0 - 1.0 / C) / np.sqrt(C - 1)
        self.cosine = PairSummary(bounds=(-1.0, 1.0), extreme="largest", light=light)
        self.abs_dev = 0.0
        self.etf_off = 0.0
        self.matrix = MatrixSink(C, 1.0) if keep_matrix else None

    def visit(self, tile: Tile, G: np.ndarray) -> np.ndarray:
        """Accumulate one Gram tile; returns its cosine block (the log energy reads it too)."""
        (i0, j0), (n, m) = (tile.i0, tile.j0), G.shape
        cos2d = G / (self.safe[i0:i0 + n, None] * self.safe[None, j0:j0 + m])
        cos = tile.values(cos2d)
        self.cosine.add(cos, tile.locate)
        self.abs_dev += float(np.abs(cos + self.ideal).sum())
        if self.gnorm > 0:
            self.etf_off += float(np.square(tile.values(G) / self.gnorm - self.e_off).sum())
        if self.matrix is not None:
            self.matrix.put(i0, j0, cos2d)
        return cos2d

    def metrics(self) -> dict:
        norms, pairs = self.norms, self.C * (self.C - 1) / 2
        etf = float("nan")
        if self.gnorm > 0:
            diag = float(np.square(norms**2 / self.gnorm - self.e_diag).sum())
            etf = float(np.sqrt(diag + 2 * self.etf_off))
        return {"nc2_equinorm": float(norms.std() / norms.mean()) if norms.mean() > 0 else float("nan"),
                "nc2_equiangle": self.cosine.std, "nc2_maxangle": self.abs_dev / pairs, "nc2_etf": etf}
