"""Subspace metrics on unit-normalized features (``docs/metrics.md``, "Subspace metrics").

Ranks, MCR^2 coding rates (Yu et al. 2020, natural log, ``eps2`` is the paper's eps^2) and principal angles
between class subspaces (Bjorck & Golub 1973), all from the per-class second moments ``S_c = zz_c / n_c``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# Principal angles whose cos^2 is above this (angles below ~5.7 degrees) come from the sines; above it arccos of the
# cosine loses at most a factor 1/sin(2 theta) <= 5 of rounding, i.e. stays within ~1e-14 relative.
SINE_BRANCH_COS2 = 0.99


def parallel_map(fn, items, workers: int | None = None) -> list:
    """``[fn(x) for x in items]`` on ``workers`` threads (default: torch's intra-op thread count).

    Meant for many independent small LAPACK problems (per-class eigh, class pairs): each thread runs single-threaded
    LAPACK (torch's thread count is set to 1 meanwhile and restored after), which keeps every core busy without the
    fine-grained synchronisation of a multi-threaded BLAS on small matrices (very slow on a loaded machine).
    """
    items = list(items)
    workers = min(len(items), torch.get_num_threads() if workers is None else int(workers))
    if workers <= 1:
        return [fn(x) for x in items]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(old)


def spectrum(S) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clamped at 0) and matching eigenvectors (columns) of a symmetric PSD matrix, on
    torch's LAPACK: numpy's BLAS runs on one thread during an analysis (:mod:`nc_probe.core.blas_threads`), where a
    512 x 512 ``numpy.linalg.eigh`` took 30 ms against 13 ms for torch's on the 2-core Xeon."""
    lam, vec = torch.linalg.eigh(torch.as_tensor(S, dtype=torch.float64))
    lam, vec = lam.numpy(), vec.numpy()
    return np.maximum(lam[::-1], 0.0), vec[:, ::-1]


def energy_rank(lam: np.ndarray, fraction: float) -> int:
    """Smallest k with ``sum_{j<=k} lambda_j >= fraction * sum_j lambda_j`` (0 for an all-zero spectrum)."""
    total = lam.sum()
    if total <= 0:
        return 0
    cum = np.cumsum(lam)
    # A relative slack of a few ulps keeps exactly-degenerate spectra (e.g. k equal eigenvalues) at k.
    return int(np.searchsorted(cum, fraction * total * (1 - 8 * np.finfo(float).eps)) + 1)


def effective_rank(lam: np.ndarray, size: int | None = None) -> float:
    """Roy & Vetterli: ``exp(entropy(p))`` with ``p_j = sigma_j / sum sigma``, ``sigma_j = sqrt(lambda_j)``.

    Eigenvalues at rounding level (``<= len(lam) * eps64 * lambda_max``, the ``matrix_rank`` cutoff) count as 0:
    the square root would turn eigh's ~1e-17 noise on a rank-deficient ``S_c`` into ~3e-9 singular values that,
    over hundreds of null directions, shift the entropy by 1e-6 relative or more (e.g. collapsed classes).
    """
    lam = np.asarray(lam, dtype=np.float64)
    if lam.size:  # ``size``: the order of the matrix, when ``lam`` holds only its nonzero part (the Gram route)
        lam = np.where(lam > (size or lam.size) * np.finfo(np.float64).eps * lam.max(), lam, 0.0)
    sigma = np.sqrt(lam)
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def numerical_rank(lam: np.ndarray, tol: float) -> int:
    """``#{lambda_j > tol * lambda_1}``."""
    if lam.size == 0 or lam[0] <= 0:
        return 0
    return int(np.count_nonzero(lam > tol * lam[0]))


def coding_rate(lam: np.ndarray, dim: int, eps2: float) -> float:
    """``1/2 logdet(I_d + (d/eps2) S)`` from the eigenvalues of S, as a sum of log1p (never det())."""
    return float(0.5 * np.sum(np.log1p((dim / eps2) * lam)))


def coding_rate_of_matrix(S: np.ndarray, eps2: float) -> float:
    """``1/2 logdet(I_d + (d/eps2) S)`` of a PSD matrix S by Cholesky: the same number as :func:`coding_rate` of
    its eigenvalues at a tenth of the cost (no eigendecomposition; ``I + aS`` has every eigenvalue >= 1, so the
    factorization is well conditioned)."""
    d = len(S)
    L = np.linalg.cholesky(np.eye(d) + (d / eps2) * S)
    return float(np.sum(np.log(np.diagonal(L))))


def coding_rate_max(dim: int, eps2: float) -> float:
    """``(d/2) ln(1 + 1/eps2)``: the rate of isotropic unit features, to read models of different d side by side."""
    return 0.5 * dim * float(np.log1p(1.0 / eps2))


def smallest_angle(Ua: np.ndarray, Ub: np.ndarray) -> tuple[float, float]:
    """Smallest principal angle (degrees) and affinity ``||Ua^T Ub||_F^2 / min(ka, kb)`` of two orthonormal bases."""
    return smallest_angle_of_block(Ua, Ub, Ua.T @ Ub)


def smallest_angle_of_block(Ua: np.ndarray, Ub: np.ndarray, P: np.ndarray) -> tuple[float, float]:
    """:func:`smallest_angle` given ``P = Ua^T Ub``.

    Cosines are the singular values of ``P``; the largest, cos theta_1, is the square root of the top eigenvalue of
    the smaller Gram matrix of ``P`` (or, next to 90 degrees where that loses digits, its top singular value). When
    ``cos^2 theta_1 > SINE_BRANCH_COS2`` the angle is taken from the sines instead, the singular values of
    ``Ub - Ua Ua^T Ub`` with ``Ub`` the smaller basis (Bjorck & Golub; ``scipy.linalg.subspace_angles`` does the
    same), so near-parallel subspaces keep their digits.
    """
    ka, kb = P.shape
    if ka == 0 or kb == 0:
        return float("nan"), float("nan")
    Ua, Ub, P = (x if min(x.strides) >= 0 else x.copy() for x in (Ua, Ub, P))  # torch takes no negative strides
    if kb > ka:
        Ua, Ub, P, ka, kb = Ub, Ua, P.T, kb, ka
    affinity = float(np.einsum("ij,ij->", P, P) / kb)
    if ka + kb > Ua.shape[0]:
        # Two subspaces whose dimensions add up to more than d share a direction: the smallest angle is 0.
        return 0.0, min(affinity, 1.0)
    Pt = torch.from_numpy(P)
    cos2 = float(torch.linalg.eigvalsh(Pt.T @ Pt)[-1])
    if cos2 < 0.01:
        # Near 90 degrees the Gram's rounding (eps in cos^2) would cost digits; the singular value has eps in cos.
        cos2 = float(torch.linalg.svdvals(Pt)[0]) ** 2
    if cos2 <= SINE_BRANCH_COS2:
        angle = math.acos(min(math.sqrt(max(cos2, 0.0)), 1.0))
    else:
        R = torch.from_numpy(Ub) - torch.from_numpy(Ua) @ Pt
        angle = math.asin(min(float(torch.linalg.svdvals(R)[-1]), 1.0))
    return math.degrees(angle), min(affinity, 1.0)
