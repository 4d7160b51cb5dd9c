"""Collapse measures that other papers and tools report beside NC1-NC4 (``docs/metrics.md``, "More collapse
measures"), from the same first-pass statistics: pure functions of the centred class means ``M`` (d x C), the
pooled within-class scatter, the class counts and the classifier ``W``, ``b``.

- ``nc1_quot`` = Tr(Sigma_W) / Tr(Sigma_B) (Tirer, Huang & Niles-Weed 2023): NC1 without the pseudo-inverse;
- ``nc3_etf`` = || W M / ||W M||_F - E ||_F with E the simplex-ETF Gram (tding1's validate_NC and rhubarbwu's
  self-duality), beside nc-probe's own ``nc3``;
- ``unc3``: the variance over classes of cos(w_c, m_c) (Wu & Papyan 2024, "uniform duality");
- ``gnc2_log_mean``, ``gnc2_log_var``: the log kernel log(1 / ||u_c - u_c'||) of the normalized centred means over
  pairs (hyperspherical uniformity, Liu et al. 2023; the NC2 that still makes sense when C > d + 1);
- ``bias_collapse`` = || W mu_G + b || (Zhu et al. 2021);
- ``vci`` = 1 - Tr(Sigma_T^+ Sigma_B) / min(d, C-1) (Xu & Liu 2023), unchanged by any invertible linear map;
- ``minority_norm_spearman``, ``minority_cosine_mean``: minority collapse under class imbalance (Fang et al. 2021).
"""

from __future__ import annotations

import math

import numpy as np

from nc_probe.metrics.pairs import PairSummary, Tile, sweep
from nc_probe.metrics.subspace import spectrum

EPS64 = np.finfo(np.float64).eps

LITERATURE_KEYS = ("nc1_quot", "nc3_etf", "unc3", "gnc2_log_mean", "gnc2_log_var", "bias_collapse", "vci",
                   "minority_norm_spearman", "minority_cosine_mean")
MINORITY_FRACTION = 4  # the bottom quarter of the classes by count (at least 2) are the minority


def literature_metrics(M: np.ndarray, scatter: np.ndarray, total: int, counts: np.ndarray,
                       W: np.ndarray | None = None, b: np.ndarray | None = None, mu_G: np.ndarray | None = None,
                       present: np.ndarray | None = None) -> dict:
    """Every key of :data:`LITERATURE_KEYS` but ``gnc2_log_*``, which the NC2 sweep gives (:class:`LogEnergy`;
    :func:`gnc2_log` on its own). ``M``: centred means of the C classes analysed (d x C); ``scatter``: the pooled
    within-class scatter (d x d, a sum over the ``total`` rows); ``counts``: their counts; ``W``, ``b``: the
    classifier (all its rows, any float dtype), ``present``: the rows of the analysed classes, ``mu_G``: the mean of
    the class means. Keys that need W are None without it."""
    out: dict = {"nc1_quot": nc1_quot(scatter, total, M), "vci": vci(scatter, total, M)}
    none = dict.fromkeys(("nc3_etf", "unc3", "bias_collapse", "minority_norm_spearman", "minority_cosine_mean"))
    if W is None:
        return {**out, **none}
    Wp = np.asarray(W if present is None else W[present], dtype=np.float64)
    out.update(nc3_etf=nc3_etf(Wp, M), unc3=unc3(Wp, M))
    out["bias_collapse"] = None if b is None or mu_G is None else bias_collapse(W, b, mu_G)
    out.update(minority(Wp, counts))
    return out


def nc1_quot(scatter: np.ndarray, total: int, M: np.ndarray) -> float:
    """``Tr(Sigma_W) / Tr(Sigma_B)``, ``Sigma_W = scatter / N``, ``Sigma_B = M M^T / C``."""
    tb = float(np.sum(M * M)) / M.shape[1]
    return float(np.trace(scatter)) / total / tb if tb > 0 else math.inf


def etf_gram(C: int) -> np.ndarray:
    """``E = (I - 11^T / C) / sqrt(C - 1)``: the Gram of a simplex ETF scaled to unit Frobenius norm."""
    return (np.eye(C) - 1.0 / C) / math.sqrt(C - 1)


#: up to this many classes nc3_etf is taken from the C x C matrices themselves; beyond, from d x d products
DIRECT_ETF_CLASSES = 4096


def nc3_etf(W: np.ndarray, M: np.ndarray) -> float | None:
    """``|| W M / ||W M||_F - E ||_F`` (C x C; rows of W and columns of M are the same classes).

    Above :data:`DIRECT_ETF_CLASSES` the C x C matrices are not formed (a 32k-way head would need 8 GB each):
    both terms have unit norm, so the square is ``2 - 2 <W M, E> / ||W M||_F``; ``M`` is centred (``M 1 = 0``), so
    ``<W M, E> = tr(W M) / sqrt(C - 1)``, and ``||W M||_F^2 = <W^T W, M M^T>`` from d x d products. Near 0 that form
    loses digits to cancellation (about 1e-8 absolute), which the direct form below the threshold does not.
    """
    C = W.shape[0]
    if C <= DIRECT_ETF_CLASSES:
        WM = W @ M
        norm = np.linalg.norm(WM)
        return None if norm == 0 else float(np.linalg.norm(WM / norm - etf_gram(len(WM))))
    return nc3_etf_from_products(float(np.sum((W.T @ W) * (M @ M.T))), float(np.einsum("cd,dc->", W, M)), C)


def nc3_etf_from_products(norm2: float, trace: float, C: int) -> float | None:
    """``nc3_etf`` from ``||W M||_F^2 = <W^T W, M M^T>`` and ``tr(W M)`` (``M`` centred), see :func:`nc3_etf`."""
    if norm2 <= 0:
        return None
    return math.sqrt(max(0.0, 2.0 - 2.0 * trace / (math.sqrt(C - 1) * math.sqrt(norm2))))


def unc3(W: np.ndarray, M: np.ndarray) -> float | None:
    """Population variance over classes of ``cos(w_c, m_c)``; None when a row or a mean is zero."""
    wn, mn = np.linalg.norm(W, axis=1), np.linalg.norm(M, axis=0)
    if np.any(wn == 0) or np.any(mn == 0):
        return None
    cos = np.einsum("cd,dc->c", W, M) / (wn * mn)
    return float(np.var(cos))


class LogEnergy:
    """``gnc2_log_mean`` and ``gnc2_log_var`` accumulated tile by tile from the cosines of the centred means, so the
    NC2 sweep (:func:`nc_probe.metrics.collapse.mean_pair_metrics`) gives them from the cosine block it computes
    anyway. ``||u - u'||^2 = 2 - 2 cos`` cancels for nearly equal directions, so those pairs (distance^2 under 1e-3)
    are recomputed as direct differences of the normalized rows; coinciding directions give an infinite mean."""

    def __init__(self, V: np.ndarray):
        norms = np.linalg.norm(V, axis=1)
        self.defined = bool(np.all(norms > 0))
        self.U = V / np.where(norms > 0, norms, 1.0)[:, None]
        self.summary = PairSummary(bounds=(-10.0, 10.0), light=True)
        self.coincide = False

    def visit(self, tile: Tile, cos: np.ndarray) -> None:
        """One tile of the cosine matrix (rows ``tile.i0..``, columns ``tile.j0..``)."""
        if not self.defined or self.coincide:
            return
        i0, j0 = tile.i0, tile.j0
        dist2 = np.maximum(2.0 - 2.0 * cos, 0.0)
        close = dist2 < 1e-3
        if tile.mask is not None:
            close &= tile.mask
        r, c = np.nonzero(close)
        if len(r):
            dist2[r, c] = np.square(self.U[r + i0] - self.U[c + j0]).sum(1)
        values = tile.values(dist2)
        if np.any(values == 0):
            self.coincide = True
            return
        self.summary.add(-0.5 * np.log(values), tile.locate)

    def metrics(self) -> dict:
        if not self.defined or not self.summary.count:
            return {"gnc2_log_mean": None, "gnc2_log_var": None}
        if self.coincide:
            return {"gnc2_log_mean": math.inf, "gnc2_log_var": None}
        return {"gnc2_log_mean": self.summary.mean, "gnc2_log_var": self.summary.m2 / self.summary.count}


def gnc2_log(M: np.ndarray, tile_rows: int | None = None) -> dict:
    """Mean and population variance over pairs c < c' of ``log(1 / ||u_c - u_c'||)``, ``u_c = m_c / ||m_c||``
    (columns of ``M``), from its own tiled sweep over the unit rows' Gram, i.e. their cosines (:class:`LogEnergy`)."""
    energy = LogEnergy(np.ascontiguousarray(M.T))
    sweep(energy.U, energy.visit, tile_rows)
    return energy.metrics()


def bias_collapse(W: np.ndarray, b: np.ndarray, mu_G: np.ndarray, rows: int = 8192) -> float:
    """``|| W mu_G + b ||_2`` over every row of the classifier (W of any float dtype, ``rows`` rows at a time in
    float64: a 256k-way head is not copied whole)."""
    total = 0.0
    for s in range(0, len(W), rows):
        r = np.asarray(W[s:s + rows], dtype=np.float64) @ mu_G + np.asarray(b[s:s + rows], dtype=np.float64)
        total += float(r @ r)
    return math.sqrt(total)


def vci(scatter: np.ndarray, total: int, M: np.ndarray) -> float | None:
    """``1 - Tr(Sigma_T^+ Sigma_B) / min(d, C-1)``, ``Sigma_T = Sigma_W + Sigma_B``; eigenvalues of ``Sigma_T``
    below ``max(d, C) * eps64`` times the largest are dropped (as for nc1). ``Tr(Sigma_T^+ Sigma_B)`` is taken as
    ``||L^-1 M||_F^2 / C`` through the eigenvectors, so no d x d inverse is formed."""
    d, C = M.shape
    sigma_t = scatter / total + M @ M.T / C
    lam, V = spectrum(sigma_t)
    if lam[0] <= 0:
        return None
    keep = lam > max(d, C) * EPS64 * lam[0]
    P = V[:, keep].T @ M  # the means in Sigma_T's eigenbasis
    t = float(np.sum(P * P / lam[keep, None])) / C
    return 1.0 - t / min(d, C - 1)


def minority(W: np.ndarray, counts: np.ndarray) -> dict:
    """Minority collapse (Fang et al. 2021): the Spearman correlation of the classifier-row norms with the class
    counts, and the mean pairwise cosine of the rows of the least frequent classes (those with at most the k-th
    smallest count, k the bottom quarter, at least 2: classes tied at the threshold all count). Both None when
    every class has the same count (no minority)."""
    counts = np.asarray(counts, dtype=np.float64)
    if len(counts) < 2 or np.all(counts == counts[0]):
        return {"minority_norm_spearman": None, "minority_cosine_mean": None}
    norms = np.linalg.norm(W, axis=1)
    k = max(2, len(counts) // MINORITY_FRACTION)
    # every class as rare as the k-th rarest: ties at the threshold all join, so no label order decides
    rows = W[counts <= np.sort(counts)[k - 1]]
    rn = np.linalg.norm(rows, axis=1)
    cos_mean = None
    if np.all(rn > 0):
        # the mean over pairs from the sum of the unit rows, ||sum u||^2 = k + 2 sum_{pairs} cos: no k x k Gram
        # (the singletons of a 32k-way head, all tied at the threshold, are thousands of rows)
        k = len(rows)
        total = (rows / rn[:, None]).sum(0)
        cos_mean = float((total @ total - k) / (k * (k - 1)))
    return {"minority_norm_spearman": spearman(norms, counts), "minority_cosine_mean": cos_mean}


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is constant."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return None if den == 0 else float(ra @ rb) / den


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]  # ties share their average rank
