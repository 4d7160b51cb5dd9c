"""Subspace metrics on unit-normalized features (``../shared/metrics-spec.md``, "Subspace metrics").

Ranks, MCR^2 coding rates (Yu et al. 2020, natural log, ``eps2`` is the paper's eps^2) and principal angles
between class subspaces (Bjorck & Golub 1973), all from the per-class second moments ``S_c = zz_c / n_c``.
"""

from __future__ import annotations

import numpy as np


def spectrum(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clamped at 0) and matching eigenvectors (columns) of a symmetric PSD matrix."""
    lam, vec = np.linalg.eigh(S)
    return np.maximum(lam[::-1], 0.0), vec[:, ::-1]


def energy_rank(lam: np.ndarray, fraction: float) -> int:
    """Smallest k with ``sum_{j<=k} lambda_j >= fraction * sum_j lambda_j`` (0 for an all-zero spectrum)."""
    total = lam.sum()
    if total <= 0:
        return 0
    cum = np.cumsum(lam)
    # A relative slack of a few ulps keeps exactly-degenerate spectra (e.g. k equal eigenvalues) at k.
    return int(np.searchsorted(cum, fraction * total * (1 - 8 * np.finfo(float).eps)) + 1)


def effective_rank(lam: np.ndarray) -> float:
    """Roy & Vetterli: ``exp(entropy(p))`` with ``p_j = sigma_j / sum sigma``, ``sigma_j = sqrt(lambda_j)``.

    Eigenvalues at rounding level (``<= len(lam) * eps64 * lambda_max``, the ``matrix_rank`` cutoff) count as 0:
    the square root would turn eigh's ~1e-17 noise on a rank-deficient ``S_c`` into ~3e-9 singular values that,
    over hundreds of null directions, shift the entropy by 1e-6 relative or more (e.g. collapsed classes).
    """
    lam = np.asarray(lam, dtype=np.float64)
    if lam.size:
        lam = np.where(lam > lam.size * np.finfo(np.float64).eps * lam.max(), lam, 0.0)
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


def coding_rate_max(dim: int, eps2: float) -> float:
    """``(d/2) ln(1 + 1/eps2)``: the rate of isotropic unit features, to read models of different d side by side."""
    return 0.5 * dim * float(np.log1p(1.0 / eps2))


def smallest_angle(Ua: np.ndarray, Ub: np.ndarray) -> tuple[float, float]:
    """Smallest principal angle (degrees) and affinity ``||Ua^T Ub||_F^2 / min(ka, kb)`` of two orthonormal bases.

    Cosines are the singular values of ``Ua^T Ub``; when the largest cosine is above ``sqrt(1/2)`` the angle is
    taken from the sines instead, the singular values of ``Ub - Ua Ua^T Ub`` with ``Ub`` the smaller basis
    (Bjorck & Golub; ``scipy.linalg.subspace_angles`` does the same), so near-parallel subspaces keep their digits.
    """
    ka, kb = Ua.shape[1], Ub.shape[1]
    if ka == 0 or kb == 0:
        return float("nan"), float("nan")
    if kb > ka:
        Ua, Ub, ka, kb = Ub, Ua, kb, ka
    P = Ua.T @ Ub
    affinity = float(np.square(P).sum() / kb)
    if ka + kb > Ua.shape[0]:
        # Two subspaces whose dimensions add up to more than d share a direction: the smallest angle is 0.
        return 0.0, min(affinity, 1.0)
    cos_max = float(np.linalg.norm(P, 2))
    if cos_max**2 <= 0.5:
        angle = float(np.arccos(min(cos_max, 1.0)))
    else:
        sines = np.linalg.svd(Ub - Ua @ P, compute_uv=False)
        angle = float(np.arcsin(min(float(sines[-1]), 1.0)))
    return float(np.degrees(angle)), min(affinity, 1.0)


def angle_matrices(bases: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``angle_min`` (degrees, diagonal 0) and ``subspace_affinity`` (diagonal 1) for every pair of bases."""
    K = len(bases)
    angles = np.zeros((K, K))
    affinity = np.eye(K)
    for i in range(K):
        for j in range(i + 1, K):
            angles[i, j], affinity[i, j] = smallest_angle(bases[i], bases[j])
            angles[j, i], affinity[j, i] = angles[i, j], affinity[i, j]
    return angles, affinity
