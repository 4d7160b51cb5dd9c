"""Known answers: perfect collapse, near-collapse accuracy, orthogonal subspaces, planted principal angles, the
MCR^2 reference values of docs/metrics.md and the NC4 tie rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nc_probe

NC_KEYS = ["nc1", "nc1_cdnv", "nc2_equinorm_M", "nc2_equiangle_M", "nc2_maxangle_M", "nc2_etf_M", "nc2_equinorm_W",
           "nc2_equiangle_W", "nc2_maxangle_W", "nc2_etf_W", "nc3", "nc4"]


def random_orthogonal(d: int, seed: int) -> np.ndarray:
    Q, R = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return Q * np.sign(np.diag(R))


def two_pass_nc1(H: np.ndarray, y: np.ndarray) -> float:
    """nc1 by the textbook two-pass float64 computation (means first, then deviations from them)."""
    ids = np.unique(y)
    mu = np.stack([H[y == c].mean(0) for c in ids])
    D = H - mu[np.searchsorted(ids, y)]
    M = (mu - mu.mean(0)).T
    C, d = len(ids), H.shape[1]
    Sigma_B = M @ M.T / C
    return float(np.trace(D.T @ D / len(H) @ np.linalg.pinv(Sigma_B, rcond=max(d, C) * np.finfo(float).eps)) / C)


# ---------------------------------------------------------------------------------------------- collapse
@pytest.mark.parametrize("sizes", [[3, 3, 3, 3, 3], [3, 1, 4, 2, 5]])
def test_perfect_simplex_etf_with_offset(etf, sizes):
    """Every sample exactly at offset + its ETF vertex, W = the vertices, b = 0: NC1-NC4 all vanish.

    Unequal class sizes check that mu_G is the class-balanced mean (the sample mean is not the ETF centre).
    """
    C, d = len(sizes), 16
    V = etf(C, d, seed=1)
    y = np.repeat(np.arange(C), sizes)
    H = 1e3 + V[y]  # the offset 1e3 * 1_d is orthogonal to the ETF, so W h + b still picks the right class
    r = nc_probe.analyze_features(H, y, V, np.zeros(C))
    for key in NC_KEYS:
        assert abs(r.metrics[key]) < 1e-8, (key, r.metrics[key])
    assert r.metrics["acc_model"] == 1.0
    assert r.metrics["acc_ncc"] == 1.0
    assert r.metrics["nc4"] == 0.0


def test_perfect_etf_detects_broken_collapse(etf):
    """Counterpart of the test above: one sample moved off its mean and a classifier off the ETF are seen."""
    C, d = 5, 16
    V = etf(C, d, seed=1)
    y = np.repeat(np.arange(C), 3)
    H = 1e3 + V[y]
    H[0] += 0.1 * V[1]
    W = V.copy()
    W[0] *= 1.5
    r = nc_probe.analyze_features(H, y, W, np.zeros(C))
    for key in ("nc1", "nc1_cdnv", "nc2_equinorm_M", "nc2_equinorm_W", "nc2_etf_W", "nc3"):
        assert r.metrics[key] > 1e-4, key


@pytest.mark.parametrize("ratio,dtype,chunk_rows", [(1e3, np.float64, None), (1e3, np.float32, 37),
                                                    (1e6, np.float64, 64)])
def test_nc1_accurate_near_collapse(ratio, dtype, chunk_rows):
    """||mu_c|| = ratio x the within-class spread: nc1 to 1e-6 relative of the two-pass float64 value."""
    rng = np.random.default_rng(11)
    C, d, n = 4, 16, 150
    mu = rng.normal(size=(C, d))
    mu *= ratio / np.linalg.norm(mu, axis=1, keepdims=True)
    y = rng.permutation(np.repeat(np.arange(C), n))
    H = (mu[y] + rng.normal(size=(C * n, d)) / math.sqrt(d)).astype(dtype)
    H64 = H.astype(np.float64)
    ref = two_pass_nc1(H64, y)
    r = nc_probe.analyze_features(H, y, chunk_rows=chunk_rows)
    assert r.metrics["nc1"] == pytest.approx(ref, rel=1e-6)
    if ratio >= 1e6:
        # Guard: here raw second moments minus mean outer products are off by far more than 1e-6,
        # so the assertion above really checks the Chan-merged scatter.
        ids = np.unique(y)
        mus = np.stack([H64[y == c].mean(0) for c in ids])
        naive_scatter = H64.T @ H64 - sum(np.sum(y == c) * np.outer(mus[i], mus[i]) for i, c in enumerate(ids))
        M = (mus - mus.mean(0)).T
        U, s, _ = np.linalg.svd(M, full_matrices=False)
        naive = np.trace(U[:, : C - 1].T @ (naive_scatter / len(H)) @ U[:, : C - 1] / (s[: C - 1] ** 2 / C)) / C
        assert abs(naive / ref - 1) > 1e-6


def test_cdnv_accurate_for_nearly_coincident_means():
    """Two class means 1e-6 apart (norms ~1, spread 1e-9): their squared distance must not be taken from the Gram
    expansion ||a||^2 + ||b||^2 - 2 a.b, which cancels; nc1_cdnv to 1e-8 relative of the two-pass value."""
    rng = np.random.default_rng(0)
    C, d, n = 4, 8, 50
    mu = rng.normal(size=(C, d))
    mu[1] = mu[0] + 1e-6 * rng.normal(size=d)
    y = np.repeat(np.arange(C), n)
    H = mu[y] + 1e-9 * rng.normal(size=(C * n, d))
    m = np.stack([H[y == c].mean(0) for c in range(C)])
    V = np.array([np.sum((H[y == c] - m[c]) ** 2) / n for c in range(C)])
    ref = np.mean([(V[i] + V[j]) / (2 * np.sum((m[i] - m[j]) ** 2)) for i in range(C) for j in range(i + 1, C)])
    assert nc_probe.analyze_features(H, y).metrics["nc1_cdnv"] == pytest.approx(ref, rel=1e-8)


# ---------------------------------------------------------------------------------------------- MCR^2 references
def orthogonal_isotropic(d: int, C: int, k: int, seed: int = 0):
    """Class c: samples +-q_j for its k columns q_j of a random orthogonal Q, with random positive norms."""
    Q = random_orthogonal(d, seed)
    rng = np.random.default_rng(seed)
    rows, y = [], []
    for c in range(C):
        for j in range(c * k, (c + 1) * k):
            for sign in (1.0, -1.0):
                rows.append(sign * rng.uniform(0.5, 2.0) * Q[:, j])
                y.append(c)
    return np.array(rows), np.array(y), Q


@pytest.mark.parametrize("d,C,k", [(120, 10, 12), (128, 8, 16)])
def test_orthogonal_isotropic_classes(d, C, k):
    """Classes filling R^d with orthogonal isotropic k-dim subspaces: closed-form coding rates, ranks k, angles 90.

    R = (d/2) ln(1 + 1/eps^2) (= coding_rate_max), R_c = (k/2) ln(1 + d/(eps^2 k)). For d=128 R is the spec's 70.31.
    """
    eps2 = 0.5
    H, y, _ = orthogonal_isotropic(d, C, k)
    r = nc_probe.analyze_features(H, y, eps2=eps2)
    m = r.metrics
    R = d / 2 * math.log(1 + 1 / eps2)
    Rc = k / 2 * math.log(1 + d / (eps2 * k))
    assert m["coding_rate_max"] == pytest.approx(R, rel=1e-12)
    assert m["coding_rate"] == pytest.approx(R, rel=1e-9)
    assert m["coding_rate_within"] == pytest.approx(Rc, rel=1e-9)
    assert m["rate_reduction"] == pytest.approx(R - Rc, rel=1e-9)
    np.testing.assert_allclose(r.per_class["coding_rate_class"], Rc, rtol=1e-9)
    if d == 128:
        assert m["coding_rate"] == pytest.approx(70.31, abs=0.01)
    for key in ("rank_energy95", "rank_energy99", "rank_numerical"):
        assert r.per_class[key] == [k] * C, key
    np.testing.assert_allclose(r.per_class["rank_effective"], k, rtol=1e-9)
    angle = np.array(r.angles["angle_min"])
    off = ~np.eye(C, dtype=bool)
    np.testing.assert_allclose(angle[off], 90.0, atol=1e-6)
    np.testing.assert_allclose(np.diag(angle), 0.0)
    np.testing.assert_allclose(np.array(r.angles["subspace_affinity"])[off], 0.0, atol=1e-12)
    assert m["angle_min_mean"] == pytest.approx(90.0, abs=1e-6)
    assert m["angle_min_min"] == pytest.approx(90.0, abs=1e-6)


def test_coding_rate_max_spec_value():
    """coding_rate_max = (d/2) ln(1 + 1/eps^2): 70.31 for d=128, eps^2=0.5 (spec), and it follows eps^2 and d."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 10)
    r = nc_probe.analyze_features(rng.normal(size=(20, 128)), y)
    assert r.metrics["coding_rate_max"] == pytest.approx(70.31, abs=0.005)
    r = nc_probe.analyze_features(rng.normal(size=(20, 30)), y, eps2=0.1)
    assert r.metrics["coding_rate_max"] == pytest.approx(15 * math.log(11), rel=1e-12)


def test_simplex_etf_coding_rates_spec_values(etf):
    """Spec reference: d=128, C=10, eps^2=0.5, unit features at the vertices of a centred simplex ETF, no spread:
    R=15.22, Rc=2.77, dR=12.45; closed forms R = (C-1)/2 ln(1 + d/(eps^2 (C-1))), R_c = 1/2 ln(1 + d/eps^2).
    The classes are lines: ranks 1, and angle_min = arccos(1/(C-1)) between every pair."""
    d, C, eps2 = 128, 10, 0.5
    V = etf(C, d, seed=3)
    y = np.repeat(np.arange(C), 3)
    r = nc_probe.analyze_features(V[y], y, eps2=eps2)
    m = r.metrics
    assert m["coding_rate"] == pytest.approx(15.22, abs=0.01)
    assert m["coding_rate_within"] == pytest.approx(2.77, abs=0.01)
    assert m["rate_reduction"] == pytest.approx(12.45, abs=0.01)
    R = (C - 1) / 2 * math.log(1 + d / (eps2 * (C - 1)))
    Rc = 0.5 * math.log(1 + d / eps2)
    assert m["coding_rate"] == pytest.approx(R, rel=1e-9)
    assert m["coding_rate_within"] == pytest.approx(Rc, rel=1e-9)
    for key in ("rank_energy95", "rank_energy99", "rank_numerical"):
        assert r.per_class[key] == [1] * C, key
    # the 127 null eigenvalues of each S_c must not leak into the effective rank
    np.testing.assert_allclose(r.per_class["rank_effective"], 1.0, rtol=0, atol=1e-12)
    theta = math.degrees(math.acos(1 / (C - 1)))
    angle = np.array(r.angles["angle_min"])
    off = ~np.eye(C, dtype=bool)
    np.testing.assert_allclose(angle[off], theta, rtol=1e-9)
    np.testing.assert_allclose(np.array(r.angles["subspace_affinity"])[off], 1 / (C - 1) ** 2, rtol=1e-9)


# ---------------------------------------------------------------------------------------------- principal angles
def planted_pair(theta_deg: float, phi_deg: float, d: int = 6, seed: int = 5):
    """Two 2-dim classes with principal angles theta < phi: span{e1, e2} and
    span{cos(theta) e1 + sin(theta) e3, cos(phi) e2 + sin(phi) e4}, rotated by a random orthogonal Q."""
    th, ph = math.radians(theta_deg), math.radians(phi_deg)
    A = np.zeros((d, 2))
    A[0, 0] = A[1, 1] = 1.0
    B = np.zeros((d, 2))
    B[0, 0], B[2, 0] = math.cos(th), math.sin(th)
    B[1, 1], B[3, 1] = math.cos(ph), math.sin(ph)
    Q = random_orthogonal(d, seed)
    t = np.arange(8) * math.pi / 8
    circle = np.stack([np.cos(t), np.sin(t)], 1)  # 8 directions: isotropic in the plane
    H = np.concatenate([circle @ (Q @ A).T, circle @ (Q @ B).T, 3.0 * circle @ (Q @ B).T])
    y = np.array([0] * 8 + [1] * 16)
    return H, y


@pytest.mark.parametrize("theta,rel", [(1e-6, 1e-4), (1e-4, 1e-6), (0.5, 1e-9), (10.0, 1e-9), (45.0, 1e-9),
                                       (75.0, 1e-9)])
def test_planted_principal_angles(theta, rel):
    """The smallest principal angle to 1e-6 degrees, and relatively accurate for tiny angles (1e-4 and 1e-6 degrees),
    which arccos of a cosine next to 1 cannot deliver. Affinity = (cos^2 theta + cos^2 phi)/2."""
    phi = 80.0
    H, y = planted_pair(theta, phi)
    r = nc_probe.analyze_features(H, y, subspace_dim=2)
    got = r.angles["angle_min"][0][1]
    assert got == pytest.approx(theta, rel=rel, abs=1e-6 if theta >= 0.5 else 0)
    assert r.angles["angle_min"][1][0] == got
    assert r.metrics["angle_min_min"] == got
    aff = (math.cos(math.radians(theta)) ** 2 + math.cos(math.radians(phi)) ** 2) / 2
    assert r.angles["subspace_affinity"][0][1] == pytest.approx(aff, rel=1e-9)
    assert r.per_class["rank_energy95"] == [2, 2]
    if theta <= 1e-4:
        # Guard: the cosine route cannot reach this accuracy (the cosine rounds next to 1).
        via_cos = math.degrees(math.acos(math.cos(math.radians(theta))))
        assert abs(via_cos - theta) > rel * theta


def test_rank95_gives_the_basis_size():
    """Without subspace_dim the basis of each class is its rank_energy95: planted 2-dim classes give 2."""
    H, y = planted_pair(10.0, 80.0)
    r = nc_probe.analyze_features(H, y)
    assert r.per_class["basis_dim"] == [2, 2]
    assert r.angles["angle_min"][0][1] == pytest.approx(10.0, rel=1e-9)


def test_subspaces_too_large_to_be_apart():
    """k_c + k_c' > d: the subspaces share a direction, so angle_min is 0; affinity = ||Qa^T Qb||_F^2 / k."""
    d, k = 6, 4
    rng = np.random.default_rng(8)
    Qa, _ = np.linalg.qr(rng.normal(size=(d, k)))
    Qb, _ = np.linalg.qr(rng.normal(size=(d, k)))
    signs = np.concatenate([np.eye(k), -np.eye(k)])  # +-columns: isotropic within each subspace
    H = np.concatenate([signs @ Qa.T, signs @ Qb.T])
    y = np.repeat([0, 1], 2 * k)
    r = nc_probe.analyze_features(H, y, subspace_dim=k)
    assert r.angles["angle_min"][0][1] == 0.0
    assert r.angles["subspace_affinity"][0][1] == pytest.approx(np.sum((Qa.T @ Qb) ** 2) / k, rel=1e-9)


# ---------------------------------------------------------------------------------------------- NC4 ties
def test_nc4_ties_go_to_the_lowest_index():
    """Sample A is equidistant from the means of classes 0 and 1 (the NCC must pick 0); sample B scores equal
    logits for classes 0 and 1 (the classifier must pick 0). Both are labelled 0, so the accuracies reveal each
    rule separately; all values are dyadic, so the ties are exact."""
    H = np.array([[2.0, 2.0],  # A: ||A - mu_0|| = ||A - mu_1||; the classifier says 1
                  [1.5, 2.0],  # B: logits 1.5 and 1.5 for classes 0 and 1; the NCC says 0
                  [0.25, 4.0], [0.25, 4.0],  # the rest of class 0, so that mu_0 = (1, 3)
                  [3.0, 1.0], [3.0, 1.0],  # class 1, mu_1 = (3, 1)
                  [20.0, 20.0], [20.0, 20.0]])  # class 2, far away
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    W = np.array([[0.0, 1.0], [1.0, 0.0], [0.75, 0.75]])
    b = np.array([-0.5, 0.0, -2.0])
    r = nc_probe.analyze_features(H, y, W, b)
    assert r.per_class["acc_ncc"] == [1.0, 1.0, 1.0]  # A -> 0
    assert r.per_class["acc_model"] == [0.75, 1.0, 1.0]  # A -> 1 (wrong), B -> 0 (right)
    assert r.metrics["nc4"] == pytest.approx(1 / 8)  # only A: classifier 1, NCC 0
    assert r.metrics["acc_model"] == pytest.approx(7 / 8)
    assert r.metrics["acc_ncc"] == 1.0
