"""Per-class spectra and bases from a group's statistics (:mod:`nc_probe.stats.subspaces`): ranks, coding rate, the
leading normalized spectrum, and the top-k eigenvectors of ``S_c`` that the principal angles use.

The Gram route (a class that kept its rows ``Z_c``, ``n_c < d``): ``Z_c Z_c^T / n_c`` has the nonzero eigenvalues of
``S_c = Z_c^T Z_c / n_c``, and an eigenvector ``v`` of the Gram maps to the eigenvector ``Z_c^T v / sqrt(n_c lambda)``
of ``S_c``. The moments route eigendecomposes ``S_c`` itself; when the class has few rows (``n_c <= d / 3``) only on
its range: ``S_c`` has rank at most ``n_c``, so with ``Q`` an orthonormal basis of ``S_c Omega`` (``Omega`` a fixed
Gaussian d x n_c matrix: the range of ``S_c`` with probability 1) the n_c x n_c matrix ``Q^T S_c Q`` has its nonzero
eigenvalues and ``Q`` maps its eigenvectors to ``S_c``'s (Halko, Martinsson & Tropp 2011, with no oversampling
needed at exact rank). The other d - n_c eigenvalues are the rounding-level zeros a full solve clamps to 0. About
4x faster at d = 512, n_c = 100 (5 ms vs 21 ms a class on one core), the same eigenvalues to 1e-15 of the largest.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from nc_probe.core.settings import MetricSettings
from nc_probe.metrics import subspace
from nc_probe.metrics.nearest_subspace import NS_DIM
from nc_probe.stats.subspaces import SubspaceAccumulator

F64 = torch.float64
SPECTRUM_KEEP = 64
RANGE_ROUTE_FRACTION = 3  # moments of a class with at most d / this rows are solved on their range (see module)


@dataclass
class ClassSpectrum:
    """One class's subspace results: its per-class metrics, leading spectrum, and (when kept) its basis."""

    cls: int
    metrics: dict
    spectrum: list
    basis: np.ndarray | None  # d x k, orthonormal columns (float64)
    ns_basis: np.ndarray | None = None  # d x min(30, rank_numerical): the nearest-subspace classifier's


def class_spectrum(acc: SubspaceAccumulator, c: int, settings: MetricSettings, keep_basis: bool,
                   keep_ns: bool = False) -> ClassSpectrum:
    """The spectrum of class ``c`` of ``acc`` and the per-class metrics of ``docs/metrics.md``; with ``keep_ns``
    also the nearest-subspace classifier's basis (:mod:`nc_probe.metrics.nearest_subspace`)."""
    d, n = acc.dim, acc.plans[c].count
    if c in acc.moments:
        S = acc.moments[c] / n
        lam, vec = _range_eigh_desc(S, n) if 0 < n * RANGE_ROUTE_FRACTION <= d else _eigh_desc(S)
        basis_of = lambda k: _completed(vec, k)  # noqa: E731
    else:
        Z = acc.class_rows(c)
        lam, V = _eigh_desc(Z @ Z.T / n)
        basis_of = lambda k: _lift_basis(Z, V, lam, n, k)  # noqa: E731
    lam_np = np.maximum(lam.cpu().numpy(), 0.0)
    r95 = subspace.energy_rank(lam_np, 0.95)
    k = settings.subspace_dim or max(r95, 1)
    metrics = {"rank_energy95": r95, "rank_energy99": subspace.energy_rank(lam_np, 0.99),
               "rank_effective": subspace.effective_rank(lam_np, size=d),
               "rank_numerical": subspace.numerical_rank(lam_np, settings.rank_tol),
               "coding_rate_class": subspace.coding_rate(lam_np, d, settings.eps2), "basis_dim": k}
    top = lam_np[:SPECTRUM_KEEP]
    total = lam_np.sum()
    basis = np.ascontiguousarray(basis_of(k).cpu().numpy()) if keep_basis else None
    ns = None
    if keep_ns:
        ns_k = min(NS_DIM, metrics["rank_numerical"])
        ns = np.ascontiguousarray(basis_of(ns_k).cpu().numpy()) if ns_k else np.zeros((d, 0))
    return ClassSpectrum(c, metrics, (top / total if total > 0 else top).tolist(), basis, ns)


def _eigh_desc(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lam, vec = torch.linalg.eigh(S)
    return lam.flip(0), vec.flip(1)


def _range_eigh_desc(S: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (all d, descending; zeros beyond ``rank``) and the top ``rank`` eigenvectors of a symmetric PSD
    ``S`` of rank at most ``rank``, from its restriction to its range (see the module docstring)."""
    d = S.shape[0]
    assert 0 < rank <= d // RANGE_ROUTE_FRACTION  # the sketch's width
    Q = torch.linalg.qr(S @ _sketch(d, S.device)[:, :rank]).Q
    B = Q.T @ S @ Q
    lam, W = _eigh_desc((B + B.T) / 2)
    return torch.cat([lam, lam.new_zeros(d - rank)]), Q @ W


@functools.lru_cache(maxsize=1)
def _sketch(d: int, device: torch.device) -> torch.Tensor:
    """The fixed Gaussian matrix of the range route, d x the most rows it takes; a class of n rows uses its first n
    columns. Made once per dimension: drawing it per class cost 0.8 ms of the route's 5 (d = 512, n = 100)."""
    return torch.randn(d, d // RANGE_ROUTE_FRACTION, generator=torch.Generator().manual_seed(0), dtype=F64).to(device)


def _completed(U: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` columns of ``U`` (orthonormal), completed beyond its width by an orthonormal basis of the
    rest of R^d, as an eigendecomposition of the d x d matrix would give."""
    if k <= U.shape[1]:
        return U[:, :k]
    return _orthonormal(torch.cat([U, torch.eye(U.shape[0], dtype=F64, device=U.device)], 1))[:, :k]


def _orthonormal(U: torch.Tensor) -> torch.Tensor:
    """Q of U's QR, each column's sign that of U's (R's diagonal made non-negative)."""
    Q, R = torch.linalg.qr(U)
    return Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, torch.ones_like(torch.diagonal(R)))


def _lift_basis(Z: torch.Tensor, V: torch.Tensor, lam: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The top-k eigenvectors of ``Z^T Z / n`` from those of ``Z Z^T / n``; beyond the rank of Z (k larger than
    the class's nonzero spectrum, e.g. a fixed ``subspace_dim``), completed by an orthonormal basis of the rest of
    R^d, as an eigendecomposition of the d x d matrix would give."""
    d = Z.shape[1]
    r = min(k, int((lam > lam[0] * max(d, Z.shape[0]) * torch.finfo(F64).eps).sum()) if len(lam) else 0)
    U = Z.T @ V[:, :r] / torch.sqrt(n * lam[:r])
    if r < k:
        U = torch.cat([U, torch.eye(d, dtype=F64, device=Z.device)], 1)
    # One QR pass makes the columns orthonormal to working precision (the lift divides by sqrt(lambda)); the
    # subspace, which is all the angles use, does not change.
    return _orthonormal(U)[:, :k]
