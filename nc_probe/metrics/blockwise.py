"""The collapse measures of many classes, a block of classes at a time (``docs/metrics.md``, "Many classes").

At a language model's vocabulary (K = 100k classes present, d = 2048) the centred means ``M`` and the classifier
rows of the classes present are 1.6 GB each in float64, and W itself (V x d) more: nothing here copies them
whole. Every measure that is a sum over classes or a function of d x d products is accumulated over blocks of
``BLOCK_ROWS`` classes (W's rows cast to float64 a block at a time), and covers every class:

- ``nc1`` and ``vci`` from the d x d Gram ``M M^T`` (its eigenvectors are the left singular vectors of M);
- ``nc2_equinorm_*`` from the norms; ``nc2_equiangle_*`` from the first two moments of the pairwise cosines,
  ``sum_{c<c'} cos = (||sum u||^2 - K) / 2`` and ``sum_{c<c'} cos^2 = (||U^T U||_F^2 - K) / 2`` (u the unit
  rows); ``nc2_etf_*`` from ``||G/||G||_F - E||_F^2 = 2 - 2 <G, E> / ||G||_F`` with ``||G||_F = ||V^T V||_F`` and
  ``<G, E> = (sum ||v||^2 - ||sum v||^2 / K) / sqrt(K - 1)``;
- ``nc3`` as the sum over classes of ``||w_c/||W|| - m_c/||M|| ||^2`` (a second pass over the blocks, no
  cancellation), ``nc3_etf`` from ``<W^T W, M M^T>``, ``unc3``, ``minority_*`` and ``bias_collapse`` (every row
  of W) directly.

These moment forms lose digits when the quantity is near 0 (equiangle when all cosines are nearly equal, the ETF
distances at a nearly perfect simplex), which at K > d + 1 classes cannot happen; with few classes the analysis
takes the direct forms of :mod:`nc_probe.metrics.collapse` and :mod:`nc_probe.metrics.literature`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from nc_probe.metrics.literature import MINORITY_FRACTION, bias_collapse, nc3_etf_from_products, spearman
from nc_probe.metrics.subspace import spectrum

BLOCK_ROWS = 4096
EPS64 = np.finfo(np.float64).eps


class RowMoments:
    """Reductions of K row vectors ``v_c`` added a block at a time: ``sum v v^T``, ``sum u u^T`` and ``sum u`` of
    the unit rows (0 for a zero row), ``sum v``, and every row's norm."""

    def __init__(self, dim: int, count: int):
        self.gram = np.zeros((dim, dim))
        self.unit_gram = np.zeros((dim, dim))
        self.unit_sum = np.zeros(dim)
        self.total = np.zeros(dim)
        self.norms = np.zeros(count)

    def add(self, start: int, v: np.ndarray) -> np.ndarray:
        """Rows ``start..`` of the vectors; returns their unit rows."""
        norms = np.sqrt(np.einsum("ij,ij->i", v, v))
        self.norms[start:start + len(v)] = norms
        u = v / np.where(norms > 0, norms, 1.0)[:, None]
        # torch's products (every core): numpy's BLAS is kept to one thread during an analysis (core.blas_threads)
        tv, tu = torch.from_numpy(np.ascontiguousarray(v)), torch.from_numpy(np.ascontiguousarray(u))
        self.gram += (tv.T @ tv).numpy()
        self.unit_gram += (tu.T @ tu).numpy()
        self.unit_sum += u.sum(0)
        self.total += v.sum(0)
        return u

    def equinorm(self) -> float:
        return float(self.norms.std() / self.norms.mean()) if self.norms.mean() > 0 else float("nan")

    def equiangle(self) -> float:
        """Population std of the pairwise cosines (a pair with a zero row has cosine 0)."""
        K = len(self.norms)
        nonzero = float(np.count_nonzero(self.norms))
        pairs = K * (K - 1) / 2
        s1 = (float(self.unit_sum @ self.unit_sum) - nonzero) / 2
        s2 = (float(np.sum(self.unit_gram * self.unit_gram)) - nonzero) / 2
        return math.sqrt(max(0.0, (s2 - s1 * s1 / pairs) / pairs))

    def etf(self) -> float:
        K = len(self.norms)
        g = float(np.linalg.norm(self.gram))
        if g == 0:
            return float("nan")
        inner = (float(self.norms @ self.norms) - float(self.total @ self.total) / K) / math.sqrt(K - 1)
        return math.sqrt(max(0.0, 2.0 - 2.0 * inner / g))

    def metrics(self) -> dict:
        return {"nc2_equinorm": self.equinorm(), "nc2_equiangle": self.equiangle(), "nc2_etf": self.etf()}


def blocks(count: int, rows: int | None = None) -> Iterator[tuple[int, int]]:
    step = rows or BLOCK_ROWS
    for s in range(0, count, step):
        yield s, min(s + step, count)


def classifier_rows(W: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` of W in float64 (a block's worth)."""
    return np.asarray(W[ids], dtype=np.float64)


def nc1_from_gram(scatter: np.ndarray, total: int, gram: np.ndarray, C: int) -> float:
    """``nc1`` from ``M M^T`` (d x d) instead of M: its eigenvalues are the squared singular values of M and its
    eigenvectors the left singular vectors; the same cut-off as :func:`~nc_probe.metrics.collapse.nc1`."""
    d = len(gram)
    lam, U = spectrum(gram)
    sb = lam / C
    if sb.size == 0 or sb[0] == 0:
        return float("inf")
    keep = sb > max(d, C) * EPS64 * sb[0]
    U, sb = U[:, keep], sb[keep]
    quad = np.einsum("ij,ij->j", U, (scatter / total) @ U)
    return float(quad @ (1.0 / sb) / C)


def vci_from_gram(scatter: np.ndarray, total: int, gram: np.ndarray, C: int) -> float | None:
    """``vci`` with ``||L^-1/2 V^T M||_F^2 = sum_j v_j^T (M M^T) v_j / lambda_j`` (see
    :func:`~nc_probe.metrics.literature.vci`)."""
    d = len(gram)
    lam, V = spectrum(scatter / total + gram / C)
    if lam[0] <= 0:
        return None
    keep = lam > max(d, C) * EPS64 * lam[0]
    Vk = V[:, keep]
    t = float(np.einsum("ij,ij->j", Vk, gram @ Vk) @ (1.0 / lam[keep])) / C
    return 1.0 - t / min(d, C - 1)


def many_class_metrics(means: np.ndarray, mu_G: np.ndarray, counts: np.ndarray, scatter: np.ndarray, total: int,
                       W: np.ndarray | None, b: np.ndarray | None, ids: np.ndarray,
                       rows: int | None = None) -> tuple[dict, np.ndarray]:
    """The class-sum and d x d measures above for the classes ``ids`` (their raw ``means``, K x d, any order the
    ids have), and the norms of their centred means. Keys of W are None without it."""
    # long: one pass over the blocks gathers every reduction of M and W's rows while the block is in cache; the
    # second pass (nc3) needs the norms of the first.
    K, d = means.shape
    mm = RowMoments(d, K)
    wm = RowMoments(d, K) if W is not None else None
    trace, cos_wm = 0.0, np.zeros(K)
    low = counts <= np.sort(counts)[max(2, K // MINORITY_FRACTION) - 1]
    low_sum = np.zeros(d)
    for s, e in blocks(K, rows):
        m = means[s:e] - mu_G
        mm.add(s, m)
        if wm is not None:
            assert W is not None
            w = classifier_rows(W, ids[s:e])
            uw = wm.add(s, w)
            dots = np.einsum("ij,ij->i", w, m)
            trace += float(dots.sum())
            cos_wm[s:e] = dots
            low_sum += uw[low[s:e]].sum(0)
    M_sq = float(mm.norms @ mm.norms)
    out: dict = {"nc1": nc1_from_gram(scatter, total, mm.gram, K),
                 "nc1_quot": float(np.trace(scatter)) / total / (M_sq / K) if M_sq > 0 else math.inf,
                 "vci": vci_from_gram(scatter, total, mm.gram, K),
                 **{f"{k}_M": v for k, v in mm.metrics().items()}}
    keys = ("nc3", "nc3_etf", "unc3", "bias_collapse", "minority_norm_spearman", "minority_cosine_mean")
    if wm is None or W is None:
        return {**out, **{f"{k}_W": None for k in mm.metrics()}, **dict.fromkeys(keys)}, mm.norms
    out.update({f"{k}_W": v for k, v in wm.metrics().items()})
    W_sq = float(wm.norms @ wm.norms)
    out["nc3"] = _nc3(means, mu_G, W, ids, math.sqrt(W_sq), math.sqrt(M_sq), rows)
    out["nc3_etf"] = nc3_etf_from_products(float(np.sum(wm.gram * mm.gram)), trace, K)
    zero = np.any(wm.norms == 0) or np.any(mm.norms == 0)
    out["unc3"] = None if zero else float(np.var(cos_wm / (wm.norms * mm.norms)))
    out["bias_collapse"] = None if b is None else bias_collapse(W, b, mu_G)
    same = bool(np.all(counts == counts[0]))
    k_low = int(low.sum())
    out["minority_norm_spearman"] = None if same else spearman(wm.norms, counts.astype(np.float64))
    out["minority_cosine_mean"] = None if same or np.any(wm.norms[low] == 0) else float(
        (low_sum @ low_sum - k_low) / (k_low * (k_low - 1)))
    return out, mm.norms


def _nc3(means, mu_G, W, ids, w_norm: float, m_norm: float, rows) -> float:
    total = 0.0
    for s, e in blocks(len(means), rows):
        total += float(np.square(classifier_rows(W, ids[s:e]) / w_norm - (means[s:e] - mu_G) / m_norm).sum())
    return total
