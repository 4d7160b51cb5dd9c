"""Label-free measures (nc_probe/metrics/label_free.py): known answers computed by hand, invariances, streaming
(moments) path against the rows, defined edge values and the errors."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from nc_probe.metrics import label_free as lf
from nc_probe.metrics.label_free import (
    alpha_req,
    label_free_from_moments,
    lidar,
    rank_effective_total,
    rankme,
    rankme_rows,
)

F64 = torch.float64


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=F64))
    return q


def entropy_rank_by_hand(values: list[float]) -> float:
    """The spec's formula written out with Python floats: exp(-sum p log p), p = v / sum v + 1e-7."""
    total = sum(values)
    ps = [v / total + 1e-7 for v in values]
    return math.exp(-sum(p * math.log(p) for p in ps))


def rows_with_singular_values(n: int, d: int, s: list[float], seed: int) -> torch.Tensor:
    """Z = U diag(s) V^T, U n x r and V d x r orthonormal."""
    r = len(s)
    return orthonormal(n, r, seed) @ torch.diag(torch.tensor(s, dtype=F64)) @ orthonormal(d, r, seed + 1).T


def moments(z: torch.Tensor):
    mean = z.mean(0)
    c = z - mean
    return z.shape[0], mean, c.T @ c


# --- RankMe -----------------------------------------------------------------------------------------------------------

def test_rankme_known_spectrum():
    s = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1]
    z = rows_with_singular_values(40, 8, s, seed=0)
    expected = entropy_rank_by_hand(s)
    assert rankme(z.T @ z, n_rows=40) == pytest.approx(expected, abs=1e-9)
    assert rankme(z.T @ z) == pytest.approx(expected, abs=1e-9)  # N >= d: the same d values
    assert rankme_rows(z) == pytest.approx(expected, abs=1e-9)
    # Scale enters only through the 1e-7: a factor 1e3 on Z moves nothing at this tolerance.
    assert rankme(1e6 * (z.T @ z), n_rows=40) == pytest.approx(expected, abs=1e-9)


def test_rankme_fewer_rows_than_features():
    s = [3.0, 2.0, 1.0, 1.0, 0.5]
    z = rows_with_singular_values(5, 12, s, seed=3)
    expected = entropy_rank_by_hand(s)
    assert rankme(z.T @ z, n_rows=5) == pytest.approx(expected, abs=1e-9)
    assert rankme_rows(z) == pytest.approx(expected, abs=1e-9)
    # Without n_rows the 7 zero eigenvalues of the Gram are summed too, each p = 1e-7 exactly.
    assert rankme(z.T @ z) == pytest.approx(entropy_rank_by_hand(s + [0.0] * 7), abs=1e-9)


def test_rankme_isotropic_is_d_per_formula():
    d = 16
    z = 3.0 * orthonormal(64, d, seed=5)  # all singular values 3
    p = 1 / d + 1e-7
    expected = math.exp(-d * p * math.log(p))
    assert rankme(z.T @ z, n_rows=64) == pytest.approx(expected, abs=1e-9)
    assert rankme_rows(z) == pytest.approx(expected, abs=1e-9)
    assert abs(expected - d) < 1e-4 * d


def test_rankme_collapsed_and_edge_values():
    one = math.exp(-(1 + 1e-7) * math.log(1 + 1e-7))
    z = torch.tensor([[1.0, 2.0, -1.0]], dtype=F64)  # N = 1
    assert rankme(z.T @ z, n_rows=1) == pytest.approx(one, abs=1e-12)
    assert rankme_rows(z) == pytest.approx(one, abs=1e-12)
    rank1 = torch.outer(torch.arange(1.0, 7.0, dtype=F64), torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64))
    # min(N, d) = 4 singular values, 3 of them zero (p = 1e-7 each); numerical zeros count as exact zeros, which
    # matters for the Gram path (sqrt of a roundoff eigenvalue is ~1e-8 sigma_1 and would move p by ~1e-8).
    rank1_expected = entropy_rank_by_hand([1.0, 0.0, 0.0, 0.0])
    assert rankme_rows(rank1) == pytest.approx(rank1_expected, abs=1e-12)
    assert rankme(rank1.T @ rank1, n_rows=6) == pytest.approx(rank1_expected, abs=1e-12)
    assert rankme(torch.tensor([[4.0]], dtype=F64), n_rows=10) == pytest.approx(one, abs=1e-12)  # d = 1
    assert rankme(torch.zeros(5, 5, dtype=F64), n_rows=3) == 0.0  # all-zero features
    assert rankme_rows(torch.zeros(3, 5, dtype=F64)) == 0.0


ZERO_BAND = 1e3  # singular values within this factor of the zero cut-off may be kept by one path and not the other


def gram_path_tolerance(z: torch.Tensor) -> float | None:
    """A first-order bound on how far ``rankme(z^T z)`` may sit from ``rankme_rows(z)``, relative; None when a
    singular value lies near the spec's zero cut-off (``sigma_i^2 <= max(N, d) eps sigma_1^2``), where one path may
    keep what the other drops. Forming and solving the Gram moves each eigenvalue by up to
    ``delta = 4 (n + d) eps sigma_1^2`` (Weyl), so each kept singular value by up to ``delta / sigma_i``; the entropy
    moves by at most the sum of those times ``|dH / d sigma_i|``: about 1e-12 for well-conditioned rows, up to
    ~5e-7 with a mean 1e3 times the spread. A fixed 1e-9 failed once (seed 23, n=33, d=24, offset 1e3: 1.6e-9
    apart, its smallest sigma^2 1.6 times the cut-off: one of the near-cut-off cases now set aside); in 12,000 draws
    at offset 1e3 the kept ones differed by at most 2.3e-10 (seed 2169 below)."""
    s = torch.linalg.svdvals(z)
    n, d = z.shape
    if not len(s) or s[0] == 0:
        return 1e-12
    eps = 2.0**-52
    ratio = (s / s[0]) ** 2
    cut = max(n, d) * eps
    if bool(((ratio > cut / ZERO_BAND) & (ratio < cut * ZERO_BAND)).any()):
        return None
    s = torch.where(ratio >= cut * ZERO_BAND, s, torch.zeros_like(s))  # the others are zeros on both paths
    delta = 4 * (n + d) * eps * float(s[0]) ** 2
    shift = torch.where(s > 0, delta / s.clamp(min=1e-300), torch.zeros_like(s))
    total = s.sum()
    p = s / total + 1e-7
    grad = ((p.log() + 1) - ((s / total) * (p.log() + 1)).sum()).abs() / total
    return 2 * float((grad * shift).sum()) + 1e-12


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 24), rank=st.integers(1, 24), seed=st.integers(0, 10_000),
       offset=st.sampled_from([0.0, 1.0, 1e3]))
@example(n=25, d=24, rank=24, seed=2169, offset=1e3)  # the largest difference kept: 2.3e-10 (bound 5e-7)
def test_rankme_rows_equals_gram_path(n, d, rank, seed, offset):
    g = torch.Generator().manual_seed(seed)
    r = min(rank, n, d)
    z = torch.randn(n, r, generator=g, dtype=F64) @ torch.randn(r, d, generator=g, dtype=F64)
    z = z + offset * torch.randn(d, generator=g, dtype=F64)  # near collapse: mean 1e3 times the spread
    tol = gram_path_tolerance(z)
    assume(tol is not None)
    assert tol < 1e-6  # the bound stays meaningful: a wrong truncation or scaling moves rankme by far more
    assert rankme(z.T @ z, n_rows=n) == pytest.approx(rankme_rows(z), rel=tol, abs=1e-12)


def test_rankme_invariances():
    g = torch.Generator().manual_seed(11)
    z = torch.randn(50, 10, generator=g, dtype=F64) * torch.linspace(0.1, 3.0, 10, dtype=F64)
    ref = rankme_rows(z)
    q = orthonormal(10, 10, seed=12)
    assert rankme_rows(z @ q) == pytest.approx(ref, abs=1e-9)  # rotation of features
    assert rankme((z @ q).T @ (z @ q), n_rows=50) == pytest.approx(ref, abs=1e-9)
    assert rankme(q.T @ (z.T @ z) @ q, n_rows=50) == pytest.approx(ref, abs=1e-9)
    perm = torch.randperm(50, generator=g)
    assert rankme_rows(z[perm]) == pytest.approx(ref, abs=1e-9)  # permutation of rows
    assert label_free_from_moments(*moments(z[perm]))["rankme"] == pytest.approx(ref, abs=1e-9)


# --- alpha-ReQ --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.5])
def test_alpha_req_power_law(alpha):
    d = 64
    lam = torch.arange(1, d + 1, dtype=F64) ** -alpha
    shuffled = 1e3 * lam[torch.randperm(d, generator=torch.Generator().manual_seed(1))]
    assert alpha_req(shuffled) == pytest.approx(alpha, abs=1e-6)
    # Through a covariance with that spectrum and eigvalsh, as a caller would do it.
    q = orthonormal(d, d, seed=2)
    cov = q @ torch.diag(lam) @ q.T
    assert alpha_req(torch.linalg.eigvalsh((cov + cov.T) / 2), n_rows=1000) == pytest.approx(alpha, abs=1e-6)


def test_alpha_req_keep_rule_uses_n_rows():
    lam = [k**-1.0 for k in range(1, 11)] + [1e-13] + [0.0] * 4 + [-1e-17]  # d = 16
    # Threshold max(N, d) * eps64 * lambda_1: 16 * 2.2e-16 = 3.6e-15 keeps 1e-13; N = 1e4 (2.2e-12) drops it.
    assert alpha_req(torch.tensor(lam, dtype=F64), n_rows=10_000) == pytest.approx(1.0, abs=1e-12)
    assert alpha_req(torch.tensor(lam, dtype=F64)) > 1.5
    assert rank_effective_total(torch.tensor(lam, dtype=F64), n_rows=10_000) == pytest.approx(
        sum(lam[:10]) ** 2 / sum(v * v for v in lam[:10]), rel=1e-12)


def test_alpha_req_nan_below_two_kept():
    assert math.isnan(alpha_req(torch.tensor([2.0], dtype=F64)))  # d = 1
    assert math.isnan(alpha_req(torch.tensor([2.0, 0.0, 1e-30], dtype=F64)))
    assert math.isnan(alpha_req(torch.zeros(4, dtype=F64)))  # all-zero features
    assert alpha_req(torch.tensor([4.0, 1.0], dtype=F64)) == pytest.approx(2.0, abs=1e-12)  # log 4 / log 2


# --- participation ratio ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("r", [1, 2, 7, 30])
def test_participation_ratio_flat_spectrum(r):
    lam = torch.cat([torch.full((r,), 0.37, dtype=F64), torch.zeros(5, dtype=F64)])
    assert rank_effective_total(lam) == pytest.approx(r, abs=1e-12)


def test_participation_ratio_known_and_edges():
    assert rank_effective_total(torch.tensor([3.0, 1.0], dtype=F64)) == pytest.approx(1.6, abs=1e-15)  # 16 / 10
    assert rank_effective_total(torch.zeros(3, dtype=F64)) == 0.0
    assert rank_effective_total(torch.tensor([5.0], dtype=F64)) == 1.0


# --- LiDAR ------------------------------------------------------------------------------------------------------------

def test_lidar_identity_within_diagonal_between():
    b = [4.0, 2.0, 1.0, 0.5, 0.0, 0.0]
    d = len(b)
    # Sigma_W = I: delta = 1e-4, LDA eigenvalues b / (1 + 1e-4); the entropy form ignores the common factor.
    expected = entropy_rank_by_hand(b)
    got = lidar(torch.eye(d, dtype=F64), torch.diag(torch.tensor(b, dtype=F64)))
    assert got == pytest.approx(expected, abs=1e-9)
    q = orthonormal(d, d, seed=4)  # rotating both leaves the LDA spectrum alone
    assert lidar(torch.eye(d, dtype=F64), q @ torch.diag(torch.tensor(b, dtype=F64)) @ q.T) == pytest.approx(
        expected, abs=1e-9)
    assert lidar(5.0 * torch.eye(d, dtype=F64), 5.0 * torch.diag(torch.tensor(b, dtype=F64))) == pytest.approx(
        expected, abs=1e-9)


def test_lidar_diagonal_within():
    w = [1.0, 2.0, 0.5, 4.0]
    b = [1.0, 3.0, 0.25, 0.0]
    delta = 1e-4 * sum(w) / len(w)
    expected = entropy_rank_by_hand([bk / (wk + delta) for wk, bk in zip(w, b)])
    q = orthonormal(4, 4, seed=8)
    got = lidar(q @ torch.diag(torch.tensor(w, dtype=F64)) @ q.T, q @ torch.diag(torch.tensor(b, dtype=F64)) @ q.T)
    assert got == pytest.approx(expected, abs=1e-9)


def test_lidar_from_views_matches_generalised_eigenproblem():
    """Surrogate classes from views; reference eigenvalues of L^-1 Sigma_B L^-T, L the Cholesky factor."""
    g = torch.Generator().manual_seed(21)
    n_src, views, d = 30, 6, 8
    sources = torch.randn(n_src, 1, d, generator=g, dtype=F64) * torch.linspace(0.2, 2.0, d, dtype=F64)
    z = sources + 0.3 * torch.randn(n_src, views, d, generator=g, dtype=F64)
    means = z.mean(1)
    within = (z - means[:, None]).reshape(-1, d)
    sigma_w = within.T @ within / (n_src * views)
    m = means - means.mean(0)
    sigma_b = m.T @ m / n_src
    chol = torch.linalg.cholesky(sigma_w + 1e-4 * sigma_w.trace() / d * torch.eye(d, dtype=F64))
    a = torch.linalg.solve_triangular(chol, sigma_b, upper=False)
    a = torch.linalg.solve_triangular(chol, a.T, upper=False)
    expected = entropy_rank_by_hand(torch.linalg.eigvalsh((a + a.T) / 2).clamp(min=0).tolist())
    assert lidar(sigma_w, sigma_b) == pytest.approx(expected, rel=1e-9)


def test_lidar_edge_values():
    b = torch.diag(torch.tensor([3.0, 1.0, 0.0], dtype=F64))
    limit = entropy_rank_by_hand([3.0, 1.0, 0.0])
    assert lidar(torch.zeros(3, 3, dtype=F64), b) == pytest.approx(limit, abs=1e-12)  # views identical: delta -> 0
    assert lidar(1e-12 * torch.eye(3, dtype=F64), b) == pytest.approx(limit, abs=1e-9)  # and continuous there
    assert lidar(torch.eye(3, dtype=F64), torch.zeros(3, 3, dtype=F64)) == 0.0


# --- streaming moments path -------------------------------------------------------------------------------------------

def merge(a, b):
    """Chan et al. merge of (n, mean, centred scatter), as a streaming accumulator does it."""
    (na, ma, sa), (nb, mb, sb) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * nb / n, sa + sb + torch.outer(delta, delta) * na * nb / n


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 60), d=st.integers(1, 20), seed=st.integers(0, 10_000), chunks=st.integers(1, 5))
def test_moments_path_equals_rows_path(n, d, seed, chunks):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=F64) * torch.linspace(0.5, 2.0, d, dtype=F64) + 2.0
    parts = [moments(c) for c in torch.tensor_split(z, min(chunks, n))]
    acc = parts[0]
    for p in parts[1:]:
        acc = merge(acc, p)
    got = label_free_from_moments(*acc)
    assert set(got) == {"rankme", "alpha_req", "rank_effective_total"}
    # the scatter's eigenvalues handed in (any order), as the analysis shares them with the PCA: same values
    lam_scatter = torch.linalg.eigvalsh((acc[2] + acc[2].T) / 2)
    given = label_free_from_moments(*acc, scatter_eigenvalues=lam_scatter[torch.randperm(d)])
    for key, value in given.items():
        assert (math.isnan(value) and math.isnan(got[key])) or value == pytest.approx(got[key], rel=1e-12, abs=1e-15)
    assert got["rankme"] == pytest.approx(rankme_rows(z), rel=1e-9)
    lam = torch.linalg.eigvalsh(torch.cov(z.T, correction=0).reshape(d, d))
    assert got["rank_effective_total"] == pytest.approx(rank_effective_total(lam, n_rows=n), rel=1e-9)
    a_rows = alpha_req(lam, n_rows=n)
    assert (math.isnan(got["alpha_req"]) and math.isnan(a_rows)) or got["alpha_req"] == pytest.approx(a_rows, rel=1e-7)


def test_moments_edge_cases():
    one = math.exp(-(1 + 1e-7) * math.log(1 + 1e-7))
    got = label_free_from_moments(1, torch.tensor([1.0, 2.0], dtype=F64), torch.zeros(2, 2, dtype=F64))  # N = 1
    assert got["rankme"] == pytest.approx(one, abs=1e-12)
    assert math.isnan(got["alpha_req"]) and got["rank_effective_total"] == 0.0
    got = label_free_from_moments(7, torch.zeros(3, dtype=F64), torch.zeros(3, 3, dtype=F64))  # all-zero features
    assert got["rankme"] == 0.0 and math.isnan(got["alpha_req"]) and got["rank_effective_total"] == 0.0
    got = label_free_from_moments(4, torch.tensor([0.0], dtype=F64), torch.tensor([[2.0]], dtype=F64))  # d = 1
    assert got["rankme"] == pytest.approx(one, abs=1e-12)
    assert math.isnan(got["alpha_req"]) and got["rank_effective_total"] == 1.0


# --- errors -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "name"), [
    (lambda: rankme(torch.zeros(3, 4, dtype=F64)), "gram"),
    (lambda: rankme(torch.zeros(3, dtype=F64)), "gram"),
    (lambda: rankme(torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=F64)), "gram.*symmetric"),
    (lambda: rankme(torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=F64)), "gram.*positive semi-definite"),
    (lambda: rankme(torch.tensor([[float("nan")]], dtype=F64)), "gram"),
    (lambda: rankme(torch.eye(2, dtype=F64), n_rows=-3), "n_rows"),
    (lambda: rankme(torch.eye(2, dtype=F64), n_rows=True), "n_rows"),
    (lambda: rankme_rows(torch.zeros(4, dtype=F64)), "rows"),
    (lambda: alpha_req(torch.eye(3, dtype=F64)), "eigenvalues"),
    (lambda: alpha_req(torch.tensor([1.0, -0.5], dtype=F64)), "eigenvalues"),
    (lambda: alpha_req(torch.tensor([1.0, 0.5], dtype=F64), n_rows=0), "n_rows"),
    (lambda: rank_effective_total(torch.tensor([], dtype=F64)), "eigenvalues"),
    (lambda: lidar(torch.eye(3, dtype=F64), torch.eye(2, dtype=F64)), "sigma_b"),
    (lambda: lidar(torch.ones(2, 3, dtype=F64), torch.eye(2, dtype=F64)), "sigma_w"),
    (lambda: lidar(-torch.eye(2, dtype=F64), torch.eye(2, dtype=F64)), "sigma_w"),
    (lambda: label_free_from_moments(-1, torch.zeros(2), torch.eye(2)), "^n must"),
    (lambda: label_free_from_moments(2.5, torch.zeros(2), torch.eye(2)), "^n must"),
    (lambda: label_free_from_moments(3, torch.zeros(3), torch.eye(2)), "mean"),
    (lambda: label_free_from_moments(3, torch.zeros(2), torch.ones(2, 3)), "scatter"),
    (lambda: label_free_from_moments(3, torch.zeros(2), torch.tensor([[1.0, 1.0], [0.0, 1.0]])), "scatter"),
    (lambda: label_free_from_moments(3, torch.zeros(2), torch.eye(2), scatter_eigenvalues=torch.ones(3)),
     "scatter_eigenvalues"),
    (lambda: label_free_from_moments(3, torch.zeros(2), torch.eye(2), scatter_eigenvalues=torch.tensor([1.0, -1.0])),
     "scatter.*positive semi-definite"),
])
def test_errors_name_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_module_imports_nothing_from_nc_probe():
    tree = ast.parse(Path(lf.__file__).read_text())
    imported = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [m for m in imported if m.startswith("nc_probe") or m.startswith(".")], imported
    assert set(imported) <= {"__future__", "math", "torch"}
