"""Label-free measures (``metric-spec``, "Label-free measures", third version): spectra of features without labels.

All four read the spread of the representation over directions; lower values mean *dimensional collapse* (the
features occupy fewer directions), except ``alpha_req``, where a *larger* decay exponent means a faster-decaying,
more collapsed spectrum.

- ``rankme`` (Garrido et al., ICML 2023): ``exp`` of the entropy of ``p_k = sigma_k / sum_j sigma_j + 1e-7``,
  ``sigma_k`` the singular values of the N x d rows ``Z`` as given (not centred). Between about 1 and min(N, d).
- ``alpha_req`` (Agrawal et al., NeurIPS 2022): ``-slope`` of the least-squares line of ``log lambda_k`` on
  ``log k`` over the kept eigenvalues of the centred covariance. Plain least squares over every kept eigenvalue, as
  the spec says (reptrix, from the authors' group, weights by 1/k and fits k = 6..100: its numbers differ).
- ``rank_effective_total`` (Gao et al. 2017): participation ratio ``(sum lambda)^2 / sum lambda^2``, in [1, d].
- ``lidar`` (Thilak et al., ICLR 2024): the rankme entropy form over the eigenvalues of the LDA matrix of surrogate
  classes (the views of one source sample). Between about 1 and min(d, classes - 1).

Kept eigenvalues: ``lambda_k > max(N, d) * eps64 * lambda_1``; the rest are numerical zeros of a rank-deficient
statistic. Everything works from d x d statistics accumulated in float64, never from rows (``rankme_rows`` is a
convenience and a cross-check). Cost: one d x d ``eigvalsh`` (O(d^3)) per measure; ``lidar`` two,
``label_free_from_moments`` two (uncentred for rankme, centred for the others).
"""

from __future__ import annotations

import math

import torch

EPS64 = torch.finfo(torch.float64).eps
RANKME_EPS = 1e-7  # Garrido et al.'s epsilon, added to every p_k; also used by Thilak et al. for LiDAR
LIDAR_DELTA = 1e-4  # delta = LIDAR_DELTA * Tr(Sigma_W) / d: relative, so LiDAR does not depend on the feature scale
_SYMMETRY_RTOL = 1e-8  # float64 accumulations are symmetric to ~1e-15; anything beyond this is the wrong input
_PSD_RTOL = 1e-6  # roundoff makes zero eigenvalues ~-1e-15 * lambda_1; -1e-6 means the input is not a Gram/covariance


def _matrix(name: str, value, d: int | None = None) -> torch.Tensor:
    a = torch.as_tensor(value, dtype=torch.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"{name} must be a square d x d matrix with d >= 1; got shape {tuple(a.shape)}. Pass the "
                         "accumulated d x d statistic (e.g. Z^T Z or a covariance), not the N x d rows.")
    if d is not None and a.shape[0] != d:
        raise ValueError(f"{name} must be {d} x {d} to match the other statistic; got {tuple(a.shape)}.")
    if not torch.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf; check the features before accumulating.")
    scale = a.abs().max()
    if (a - a.T).abs().max() > _SYMMETRY_RTOL * scale:
        raise ValueError(f"{name} must be symmetric (a Gram or covariance matrix); it is not, to a relative "
                         f"{_SYMMETRY_RTOL:g}. Pass Z^T Z or a covariance, or symmetrise it with (A + A.T) / 2.")
    return (a + a.T) / 2


def _psd_eigenvalues(name: str, a: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix, descending, roundoff negatives clipped to 0."""
    return _psd_checked(name, torch.linalg.eigvalsh(a).flip(0))


def _psd_checked(name: str, lam: torch.Tensor) -> torch.Tensor:
    """A PSD matrix's eigenvalues ``lam`` (descending), checked and with roundoff negatives clipped to 0."""
    if lam[-1] < -_PSD_RTOL * lam.abs().max():
        raise ValueError(f"{name} has eigenvalue {lam[-1].item():.6g} (largest {lam[0].item():.6g}); it must be "
                         "positive semi-definite. Pass Z^T Z or a covariance accumulated in float64.")
    return lam.clamp(min=0)


def _check_n(name: str, n, allow_none: bool = True) -> int | None:
    if n is None and allow_none:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, the number of feature rows accumulated; got {n!r}.")
    return n


def _zero_below_tol(lam: torch.Tensor, n_rows: int | None, d: int) -> torch.Tensor:
    """Descending PSD eigenvalues with the spec's numerical zeros (<= max(N, d) * eps64 * lambda_1) set to 0."""
    tol = max(n_rows or 0, d) * EPS64 * lam[0]
    return torch.where(lam > tol, lam, torch.zeros_like(lam))


def _entropy_rank(values: torch.Tensor) -> float:
    """``exp(-sum p log p)``, ``p = v / sum v + 1e-7``. All-zero values (no spread at all): 0.0, the rank of 0."""
    total = values.sum()
    if total <= 0:
        return 0.0
    p = values / total + RANKME_EPS
    return math.exp(-(p * p.log()).sum().item())


def rankme(gram: torch.Tensor, n_rows: int | None = None) -> float:
    """RankMe from ``gram = Z^T Z`` (d x d, uncentred, unscaled) of the N x d rows ``Z``.

    ``sigma_k = sqrt(eigenvalues of gram)``; the sum runs over the ``min(n_rows, d)`` largest, the singular values of
    ``Z`` (over all d when ``n_rows`` is None: each extra zero adds ~1.6e-6 to the entropy through the 1e-7).
    Numerically zero eigenvalues (see module) count as exactly 0, so this equals ``rankme_rows(Z)`` to roundoff;
    raw ``svdvals`` would move the result by < 1e-6 per such direction. Any positive scaling of ``gram`` changes
    the value only through the 1e-7. Defined values: all-zero features 0.0; a single term (``n_rows`` = 1, or d = 1)
    ``exp(-(1+1e-7) log(1+1e-7))``, just below 1.
    """
    n_rows = _check_n("n_rows", n_rows)
    g = _matrix("gram", gram)
    lam = _zero_below_tol(_psd_eigenvalues("gram", g), n_rows, g.shape[0])
    if n_rows is not None:
        lam = lam[:n_rows]  # Z has min(N, d) singular values; the other d - N eigenvalues are zeros of the Gram
    return _entropy_rank(lam.sqrt())


def rankme_rows(rows: torch.Tensor) -> float:
    """RankMe of the N x d rows ``Z`` via their singular values; same value as ``rankme(Z.T @ Z, n_rows=N)``."""
    z = torch.as_tensor(rows, dtype=torch.float64)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"rows must be an N x d matrix with N, d >= 1; got shape {tuple(z.shape)}.")
    if not torch.isfinite(z).all():
        raise ValueError("rows contains NaN or inf; check the features.")
    sigma = torch.linalg.svdvals(z)
    return _entropy_rank(_zero_below_tol(sigma**2, z.shape[0], z.shape[1]).sqrt())


def _kept(name: str, eigenvalues, n_rows: int | None) -> torch.Tensor:
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    if lam.ndim != 1 or lam.numel() == 0:
        raise ValueError(f"{name} must be a 1-D tensor of the d eigenvalues of the centred covariance; "
                         f"got shape {tuple(lam.shape)}. Use torch.linalg.eigvalsh on the d x d covariance.")
    if not torch.isfinite(lam).all():
        raise ValueError(f"{name} contains NaN or inf.")
    lam = lam.sort(descending=True).values
    if lam[-1] < -_PSD_RTOL * lam.abs().max():
        raise ValueError(f"{name} has a negative value {lam[-1].item():.6g}; eigenvalues of a covariance are >= 0.")
    lam = _zero_below_tol(lam.clamp(min=0), _check_n("n_rows", n_rows), lam.numel())
    return lam[lam > 0]


def alpha_req(eigenvalues: torch.Tensor, n_rows: int | None = None) -> float:
    """Power-law decay exponent of the centred covariance spectrum: ``-slope`` of ``log lambda_k`` on ``log k``.

    ``eigenvalues`` in any order (any scale: the slope ignores it); ``n_rows`` is N for the keep rule
    ``lambda_k > max(N, d) * eps64 * lambda_1`` (``d`` = number of eigenvalues when None). NaN when fewer than 2
    eigenvalues are kept (N = 1, d = 1, all-zero features): a line needs two points.
    """
    lam = _kept("eigenvalues", eigenvalues, n_rows)
    if lam.numel() < 2:
        return float("nan")
    x = torch.arange(1, lam.numel() + 1, dtype=torch.float64).log()
    y = lam.log()
    x = x - x.mean()
    return -float((x * (y - y.mean())).sum() / (x * x).sum())


def rank_effective_total(eigenvalues: torch.Tensor, n_rows: int | None = None) -> float:
    """Participation ratio ``(sum lambda)^2 / sum lambda^2`` of the kept eigenvalues (keep rule as ``alpha_req``).

    r equal eigenvalues give r. All-zero spectrum (N = 1, constant or all-zero features): 0.0.
    """
    lam = _kept("eigenvalues", eigenvalues, n_rows)
    if lam.numel() == 0:
        return 0.0
    return float(lam.sum() ** 2 / (lam**2).sum())


def lidar(sigma_w: torch.Tensor, sigma_b: torch.Tensor) -> float:
    """LiDAR: the RankMe entropy form over the eigenvalues ``lambda_k`` of the LDA matrix
    ``(Sigma_W + delta I)^{-1/2} Sigma_B (Sigma_W + delta I)^{-1/2}``, ``delta = 1e-4 Tr(Sigma_W) / d``.

    As in Thilak et al. (and reptrix), ``p_k = lambda_k / sum_j lambda_j + 1e-7`` over all d eigenvalues
    themselves, not their square roots (rankme's sigma_k are square roots of Gram eigenvalues; the LDA matrix is
    already a ratio of variances). ``sigma_w``/``sigma_b``: within/between covariances of the surrogate classes (the
    views of one source sample); their normalisation (1/N or the paper's 1/(n-1) for Sigma_B) changes the value
    only through the 1e-7, as does scaling both together. Defined values: ``Sigma_W = 0`` (views identical) takes
    the limit delta -> 0, the entropy form over the eigenvalues of ``Sigma_B``; ``Sigma_B = 0``: 0.0.
    """
    w = _matrix("sigma_w", sigma_w)
    b = _matrix("sigma_b", sigma_b, d=w.shape[0])
    d = w.shape[0]
    lam_b = _psd_eigenvalues("sigma_b", b)
    _psd_eigenvalues("sigma_w", w)  # validation only: the whitening below needs Sigma_W + delta I > 0
    delta = LIDAR_DELTA * w.trace() / d
    if delta <= 0:
        return _entropy_rank(_zero_below_tol(lam_b, None, d))
    vals, vecs = torch.linalg.eigh(w + delta * torch.eye(d, dtype=torch.float64))
    inv_sqrt = (vecs * vals.clamp(min=delta).rsqrt()) @ vecs.T  # eigenvalues >= delta up to roundoff
    lda = inv_sqrt @ b @ inv_sqrt
    lam = torch.linalg.eigvalsh((lda + lda.T) / 2).flip(0).clamp(min=0)
    return _entropy_rank(_zero_below_tol(lam, None, d))


def label_free_from_moments(n: int, mean: torch.Tensor, scatter: torch.Tensor, *,
                            scatter_eigenvalues: torch.Tensor | None = None) -> dict[str, float]:
    """``rankme``, ``alpha_req``, ``rank_effective_total`` of N rows from their count, mean and centred scatter.

    ``scatter = sum_i (z_i - mean)(z_i - mean)^T`` (as a ClassStats-style accumulator keeps it, Chan merges).
    ``Z^T Z = scatter + n mean mean^T`` for rankme; the centred covariance is ``scatter / n``, about the rows' own
    mean (with labels and unequal classes that differs from ``Sigma_W + Sigma_B`` about the class-balanced mean).
    The uncentred Gram squares the conditioning: rankme agrees with the rows to ~1e-13 centred, ~1e-10 at ||mean|| 1e3
    x spread, ~1e-8 at 1e5 (relative). ``scatter_eigenvalues``: the scatter's eigenvalues when the caller has them
    (any order), which saves one eigensolve.
    """
    checked = _check_n("n", n, allow_none=False)
    assert checked is not None  # allow_none=False
    n = checked
    s = _matrix("scatter", scatter)
    mu = torch.as_tensor(mean, dtype=torch.float64)
    if mu.shape != (s.shape[0],):
        raise ValueError(f"mean must be a vector of length d = {s.shape[0]} (the scatter's size); got shape "
                         f"{tuple(mu.shape)}.")
    if not torch.isfinite(mu).all():
        raise ValueError("mean contains NaN or inf.")
    if scatter_eigenvalues is None:
        lam = _psd_eigenvalues("scatter", s) / n
    else:
        given = torch.as_tensor(scatter_eigenvalues, dtype=torch.float64)
        if given.shape != (s.shape[0],):
            raise ValueError(f"scatter_eigenvalues must be the d = {s.shape[0]} eigenvalues of the scatter; got "
                             f"shape {tuple(given.shape)}.")
        lam = _psd_checked("scatter", given.sort(descending=True).values) / n
    return {
        "rankme": rankme(s + n * torch.outer(mu, mu), n_rows=n),
        "alpha_req": alpha_req(lam, n_rows=n),
        "rank_effective_total": rank_effective_total(lam, n_rows=n),
    }
