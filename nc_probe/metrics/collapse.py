"""Neural-collapse metrics NC1-NC3 on raw features (``docs/metrics.md``, "Collapse metrics").

Pure functions of float64 arrays taken from :class:`~nc_probe.stats.ClassStats`; only classes with samples are
passed in. NC4 and the accuracies need a second pass over the features: :mod:`nc_probe.metrics.predictions`.
"""

from __future__ import annotations

import numpy as np

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
    sigma_w = scatter / total
    return float(np.einsum("ij,ik,kj->j", U, sigma_w, U) @ (1.0 / sb) / C)


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
