"""The literature's other collapse measures (nc1_quot, nc3_etf, unc3, gnc2_log_*, bias_collapse, vci, minority_*):
known answers, an independent recomputation from raw features, invariances, and tiling independence."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nc_probe
from nc_probe.metrics import literature, pairs

KEYS = literature.LITERATURE_KEYS


def reference(H, y, W, b):
    """Each measure from its definition in docs/metrics.md, straight from the rows (no ClassStats)."""
    classes = np.unique(y)
    C, (N, d) = len(classes), H.shape
    mus = np.stack([H[y == c].mean(0) for c in classes])
    mu_G = mus.mean(0)
    M = (mus - mu_G).T
    R = H - mus[np.searchsorted(classes, y)]
    SW, SB = R.T @ R / N, M @ M.T / C
    E = (np.eye(C) - np.ones((C, C)) / C) / np.sqrt(C - 1)
    WM = W[classes] @ M
    cos_wm = [W[c] @ M[:, i] / np.linalg.norm(W[c]) / np.linalg.norm(M[:, i]) for i, c in enumerate(classes)]
    U = M / np.linalg.norm(M, axis=0)
    logs = [-math.log(np.linalg.norm(U[:, i] - U[:, j])) for i in range(C) for j in range(i + 1, C)]
    ST = SW + SB
    counts = np.array([np.sum(y == c) for c in classes])
    out = {"nc1_quot": np.trace(SW) / np.trace(SB), "nc3_etf": np.linalg.norm(WM / np.linalg.norm(WM) - E),
           "unc3": np.var(cos_wm), "gnc2_log_mean": np.mean(logs), "gnc2_log_var": np.var(logs),
           "bias_collapse": np.linalg.norm(W @ mu_G + b),
           "vci": 1 - np.trace(np.linalg.pinv(ST) @ SB) / min(d, C - 1)}
    norms = np.linalg.norm(W[classes], axis=1)
    rank = lambda v: np.argsort(np.argsort(v)).astype(float)  # noqa: E731 - distinct values in these tests
    out["minority_norm_spearman"] = np.corrcoef(rank(norms), rank(counts))[0, 1]
    k = max(2, C // 4)
    low = classes[counts <= np.sort(counts)[k - 1]]
    Wl = W[low] / np.linalg.norm(W[low], axis=1, keepdims=True)
    out["minority_cosine_mean"] = np.mean([Wl[i] @ Wl[j] for i in range(len(low)) for j in range(i + 1, len(low))])
    return out


def _data(seed, C=9, d=7, sizes=None):
    rng = np.random.default_rng(seed)
    sizes = sizes or [10 + 7 * c for c in range(C)]  # distinct counts: a minority exists
    y = np.repeat(np.arange(C), sizes)
    H = 2 * rng.normal(size=(C, d))[y] + rng.normal(size=(len(y), d)) + 5.0  # means far from the origin
    W, b = rng.normal(size=(C + 2, d)), rng.normal(size=C + 2)  # two rows of classes without samples
    return H, y, W, b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_measure_matches_its_definition(seed):
    H, y, W, b = _data(seed)
    r = nc_probe.analyze_features(H, y, W, b)
    ref = reference(H, y, W, b)
    for key in KEYS:
        assert r.metrics[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    assert list(r.metrics).index("nc3") + 1 == list(r.metrics).index(KEYS[0])  # beside the collapse keys


def test_collapsed_simplex_etf_gives_zero():
    C, d = 6, 8
    rng = np.random.default_rng(5)
    Q, _ = np.linalg.qr(rng.normal(size=(d, C)))
    etf = Q @ (np.eye(C) - 1.0 / C) * 3.0  # columns: a simplex ETF in R^d
    mu_G = rng.normal(size=d)
    y = np.repeat(np.arange(C), 4)
    H = (etf.T + mu_G)[y]  # every sample at its class mean
    W = etf.T * 0.5  # self-dual classifier
    b = -W @ mu_G
    m = nc_probe.analyze_features(H, y, W, b).metrics
    for key in ("nc1_quot", "nc3_etf", "unc3", "gnc2_log_var", "bias_collapse", "vci"):
        assert m[key] == pytest.approx(0.0, abs=1e-7), key
    # equidistant unit vectors of a simplex: ||u - u'||^2 = 2 + 2/(C-1)
    assert m["gnc2_log_mean"] == pytest.approx(-0.5 * math.log(2 + 2 / (C - 1)), rel=1e-12)
    assert m["minority_norm_spearman"] is None and m["minority_cosine_mean"] is None  # balanced classes


def test_without_a_classifier_the_w_measures_are_absent():
    H, y, _, _ = _data(3)
    m = nc_probe.analyze_features(H, y).metrics
    assert all(m[k] is None for k in ("nc3_etf", "unc3", "bias_collapse", "minority_cosine_mean"))
    assert m["vci"] is not None and m["gnc2_log_mean"] is not None


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_vci_is_unchanged_by_an_invertible_linear_map(seed):
    H, y, _, _ = _data(seed % 7, C=5, d=6)
    A = np.random.default_rng(seed).normal(size=(6, 6)) + 3 * np.eye(6)
    a = nc_probe.analyze_features(H, y).metrics["vci"]
    b = nc_probe.analyze_features(H @ A.T + 1.5, y).metrics["vci"]
    assert b == pytest.approx(a, rel=1e-7, abs=1e-12)


@settings(max_examples=10, deadline=None)
@given(tile=st.integers(1, 12), seed=st.integers(0, 100))
def test_gnc2_does_not_depend_on_the_tile_size(tile, seed):
    M = np.random.default_rng(seed).normal(size=(5, 11))
    full = literature.gnc2_log(M)
    with mock.patch.object(pairs, "TILE_ROWS", tile):
        tiled = literature.gnc2_log(M, tile_rows=tile)
    assert tiled["gnc2_log_mean"] == pytest.approx(full["gnc2_log_mean"], rel=1e-12)
    assert tiled["gnc2_log_var"] == pytest.approx(full["gnc2_log_var"], rel=1e-9, abs=1e-15)


def test_gnc2_is_exact_for_nearly_equal_directions():
    # two means 1e-9 radians apart: 2 - 2 cos cancels to nothing in float64; the direct difference does not
    M = np.array([[1.0, math.cos(1e-9), -1.0], [0.0, math.sin(1e-9), 0.1]])
    out = literature.gnc2_log(M)
    U = M / np.linalg.norm(M, axis=0)
    logs = [-math.log(np.linalg.norm(U[:, i] - U[:, j])) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert out["gnc2_log_mean"] == pytest.approx(np.mean(logs), rel=1e-6)


def test_minority_ties_at_the_threshold_all_join():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(8, 3))
    counts = np.array([5, 5, 5, 9, 9, 9, 9, 9])  # k = 2, but three classes share the smallest count
    U = W[:3] / np.linalg.norm(W[:3], axis=1, keepdims=True)
    expected = np.mean([U[0] @ U[1], U[0] @ U[2], U[1] @ U[2]])
    assert literature.minority(W, counts)["minority_cosine_mean"] == pytest.approx(expected, rel=1e-12)


def test_spearman_with_ties():
    assert literature.spearman(np.array([1, 2, 2, 3.0]), np.array([10, 20, 20, 30.0])) == pytest.approx(1.0)
    assert literature.spearman(np.array([1, 2, 3.0]), np.array([3, 2, 1.0])) == pytest.approx(-1.0)
    assert literature.spearman(np.array([1, 1, 1.0]), np.array([1, 2, 3.0])) is None


@pytest.mark.parametrize("seed", [0, 1])
def test_mahalanobis_ncc_matches_its_definition_and_differs_from_euclidean(seed):
    rng = np.random.default_rng(seed)
    C, d, n = 5, 6, 400
    y = rng.integers(0, C, n)
    A = np.diag([6.0, 3.0, 1.0, 0.3, 0.2, 0.1]) @ np.linalg.qr(rng.normal(size=(d, d)))[0]
    H = rng.normal(size=(C, d))[y] + rng.normal(size=(n, d)) @ A  # strongly anisotropic within-class spread
    r = nc_probe.analyze_features(H, y, mahalanobis=True)
    mus = np.stack([H[y == c].mean(0) for c in range(C)])
    R = H - mus[y]
    S = np.linalg.pinv(R.T @ R / n)
    D = np.stack([np.einsum("nd,de,ne->n", H - mus[c], S, H - mus[c]) for c in range(C)], axis=1)
    acc = float(np.mean(np.argmin(D, axis=1) == y))
    assert r.metrics["acc_ncc_mahalanobis"] == pytest.approx(acc, abs=1e-12)
    assert r.metrics["acc_ncc_mahalanobis"] > r.metrics["acc_ncc"] + 0.05  # the whitening matters here


def test_mahalanobis_is_skipped_above_its_work_limit():
    H, y, W, b = _data(4)
    with mock.patch("nc_probe.metrics.probe.MAHALANOBIS_MAX_WORK", 10):
        assert nc_probe.analyze_features(H, y, W, b, mahalanobis=True).metrics["acc_ncc_mahalanobis"] is None


def _nearest_subspace_reference(H, y, rank_tol=1e-6):
    classes = np.unique(y)
    Z = H / np.linalg.norm(H, axis=1, keepdims=True)
    bases = []
    for c in classes:
        Zc = Z[y == c]
        lam, V = np.linalg.eigh(Zc.T @ Zc / len(Zc))
        lam, V = lam[::-1], V[:, ::-1]
        r = int(np.sum(lam > rank_tol * lam[0]))
        bases.append(V[:, :min(30, r)])
    scores = np.stack([np.sum((Z @ U) ** 2, axis=1) for U in bases], axis=1)
    tied = scores >= scores.max(axis=1, keepdims=True) - 1e-12  # tied classes share the row
    own = np.searchsorted(classes, y)
    return float(np.mean(tied[np.arange(len(y)), own] / tied.sum(1)))


@pytest.mark.parametrize("seed", [0, 1])
def test_nearest_subspace_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    C, d = 4, 40
    y = np.repeat(np.arange(C), [60, 45, 80, 50])
    dims = [3, 5, 8, 40]  # three low-rank classes (fewer than 30 directions) and one full-rank one
    bases = [np.linalg.qr(rng.normal(size=(d, k)))[0] for k in dims]
    H = np.stack([bases[c] @ rng.normal(size=dims[c]) for c in y]) + rng.normal(size=(len(y), d))
    assert nc_probe.analyze_features(H, y).metrics["acc_nearest_subspace"] is None  # opt-in: a pass of its own
    m = nc_probe.analyze_features(H, y, nearest_subspace=True).metrics
    ref = _nearest_subspace_reference(H, y)
    assert 0.3 < ref < 1.0
    assert m["acc_nearest_subspace"] == pytest.approx(ref, abs=1e-12)
    with mock.patch("nc_probe.metrics.nearest_subspace.BLOCK_BYTES", 8 * 7 * 100):  # blocks of 7 rows
        assert nc_probe.analyze_features(H, y, nearest_subspace=True).metrics["acc_nearest_subspace"] == \
            pytest.approx(ref, abs=1e-12)
    with mock.patch("nc_probe.metrics.nearest_subspace.NS_MAX_WORK", 10):
        assert nc_probe.analyze_features(H, y, nearest_subspace=True).metrics["acc_nearest_subspace"] is None


def test_nc3_etf_without_c_by_c_matrices_agrees_with_the_direct_form():
    H, y, W, b = _data(5, C=12, d=9)
    mus = np.stack([H[y == c].mean(0) for c in range(12)])
    M = (mus - mus.mean(0)).T
    direct = literature.nc3_etf(W[:12], M)
    with mock.patch.object(literature, "DIRECT_ETF_CLASSES", 3):
        assert literature.nc3_etf(W[:12], M) == pytest.approx(direct, rel=1e-9)
