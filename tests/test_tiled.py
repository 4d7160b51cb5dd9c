"""The field-scale code paths at small sizes: tiled class-pair sweeps, tiled all-pairs principal angles, subspace
statistics gathered in groups (Gram route and moments route), class filtering and the side file of large matrices.

Each path is checked against an independent float64 computation (plain numpy / scipy, written from the definitions)
and against itself under other tile sizes and memory budgets: the same numbers whatever the tiling.
"""

from __future__ import annotations

import itertools
import json
import math
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reference import _nc2, assert_matches_reference, reference

import nc_probe
from nc_probe.analysis import spectra, subspace_report
from nc_probe.metrics import angles, pairs
from nc_probe.metrics.angles import all_pair_angles
from nc_probe.metrics.collapse import mean_pair_metrics, row_pair_metrics
from nc_probe.metrics.pairs import PairSummary

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------- pair summaries
def _cdnv_reference(M: np.ndarray, var: np.ndarray) -> np.ndarray:
    C = M.shape[1]
    return np.array([(var[i] + var[j]) / (2 * np.sum((M[:, i] - M[:, j]) ** 2))
                     for i, j in itertools.combinations(range(C), 2)])


@pytest.mark.parametrize("tile", [1, 2, 5, 7, 64])
def test_mean_pair_metrics_any_tile_size_match_the_definitions(tile):
    rng = np.random.default_rng(tile)
    d, C = 9, 17
    M = rng.normal(size=(d, C)) * rng.uniform(0.5, 3, size=C)
    M -= M.mean(1, keepdims=True)
    var = rng.uniform(0.1, 2, size=C)
    out = mean_pair_metrics(M, var, keep_matrix=True, tile_rows=tile)
    terms = _cdnv_reference(M, var)
    assert out.metrics["nc1_cdnv"] == pytest.approx(terms.mean(), rel=1e-13)
    for key, value in _nc2(M.T).items():
        assert out.metrics[f"nc2_{key}_M"] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    unit = M / np.linalg.norm(M, axis=0)
    np.testing.assert_allclose(out.cosine_matrix, unit.T @ unit, rtol=0, atol=1e-14)
    # the summaries: statistics of all pairs, exact quantiles, the most extreme pairs
    iu = np.triu_indices(C, 1)
    cos = (unit.T @ unit)[iu]
    s = out.cosine
    assert (s.count, s.lo, s.hi) == (len(cos), pytest.approx(cos.min()), pytest.approx(cos.max()))
    assert s.mean == pytest.approx(cos.mean(), rel=1e-12) and s.std == pytest.approx(cos.std(), rel=1e-12)
    q, method = s.quantiles()
    assert method == "exact" and q["0.5"] == pytest.approx(np.quantile(cos, 0.5), rel=1e-13)
    top = [(a, b) for _, a, b in s.top[:3]]
    expected = [(int(iu[0][p]), int(iu[1][p])) for p in np.argsort(-cos)[:3]]
    assert top == expected
    assert out.cdnv.hi == pytest.approx(terms.max(), rel=1e-13)
    assert out.cdnv.top[0][1:] == (int(iu[0][np.argmax(terms)]), int(iu[1][np.argmax(terms)]))


def test_cdnv_of_nearly_coincident_means_far_from_the_origin():
    """Two class means 1e-7 apart, 1e4 from the origin: the Gram expansion would cancel; the recompute does not."""
    rng = np.random.default_rng(0)
    means = 1e4 + rng.normal(size=(4, 6))
    means[1] = means[0] + 1e-7 * rng.normal(size=6)
    M = (means - means.mean(0)).T
    var = np.full(4, 1e-12)
    out = mean_pair_metrics(M, var, tile_rows=2)
    exact = _cdnv_reference(M, var).mean()
    assert out.metrics["nc1_cdnv"] == pytest.approx(exact, rel=1e-6)


def test_row_pair_metrics_match_the_definitions_under_tiling():
    W = np.random.default_rng(3).normal(size=(23, 11))
    ref = _nc2(W)
    for tile in (1, 4, 100):
        out = row_pair_metrics(W, tile_rows=tile)
        for key, value in ref.items():
            assert out.metrics[f"nc2_{key}"] == pytest.approx(value, rel=1e-12), (tile, key)


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(1, 300), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_pair_summary_does_not_depend_on_how_pairs_are_split_into_tiles(seed, n, cuts):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=n) * 10 ** rng.uniform(-3, 3)
    a, b = rng.integers(0, 50, size=n), rng.integers(50, 100, size=n)
    s = PairSummary(bounds=(-1e4, 1e4))
    for part in np.split(np.arange(n), sorted(c for c in cuts if c < n)):
        s.add(values[part], a[part], b[part])
    assert s.count == n
    assert s.mean == pytest.approx(values.mean(), rel=1e-12, abs=1e-12 * np.abs(values).max())
    assert s.std == pytest.approx(values.std(), rel=1e-9, abs=1e-12 * np.abs(values).max())
    assert (s.lo, s.hi) == (values.min(), values.max())
    q, _ = s.quantiles()
    assert q["0.25"] == np.quantile(values, 0.25)
    top = [v for v, _, _ in s.top]
    assert top == sorted(values, reverse=True)[:pairs.TOP_PAIRS]


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(1, 400), parts=st.integers(1, 9),
       extreme=st.sampled_from(["largest", "smallest"]))
def test_kept_pairs_are_one_global_sort_whatever_the_tiling_even_with_ties(seed, n, parts, extreme):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4, size=n).astype(float)  # many ties
    a, b = rng.permutation(n), np.arange(n) + n  # distinct pairs
    order = rng.permutation(n)
    s = PairSummary(bounds=(0, 4), extreme=extreme)
    for part in np.array_split(order, parts):
        s.add(values[part], a[part], b[part])
    sign = -1 if extreme == "largest" else 1
    expected = sorted(zip(values, a, b), key=lambda t: (sign * t[0], t[1], t[2]))[:pairs.TOP_PAIRS]
    assert [(v, x, y) for v, x, y in s.top] == [(float(v), int(x), int(y)) for v, x, y in expected]


def test_histogram_quantiles_beyond_the_exact_limit(monkeypatch):
    """Past EXACT_QUANTILE_PAIRS the quantiles come from the histogram: the centre of the bin holding the exact
    quantile (the smallest value whose share of pairs at or below it reaches q), so within half a bin of it."""
    monkeypatch.setattr(pairs, "EXACT_QUANTILE_PAIRS", 1000)
    rng = np.random.default_rng(1)
    values = rng.uniform(0, 90, size=20_000)
    s = PairSummary(bounds=(0.0, 90.0), extreme="smallest")
    for part in np.array_split(np.arange(len(values)), 13):
        s.add(values[part], part, part + 1)
    q, method = s.quantiles()
    assert method.startswith("histogram")
    width = 90.0 / pairs.HISTOGRAM_BINS
    for key, value in q.items():
        exact = np.quantile(values, float(key), method="inverted_cdf")
        assert abs(value - exact) <= 0.5 * width * (1 + 1e-9), key
    assert [v for v, _, _ in s.top] == sorted(values)[:pairs.TOP_PAIRS]
    logs = PairSummary(bounds=(1e-12, 1e12), log=True)
    lv = 10 ** rng.uniform(-6, 6, size=5000)
    logs.add(lv, np.zeros(5000, int), np.ones(5000, int))
    lq, _ = logs.quantiles()
    log_width = 24 * math.log(10) / pairs.HISTOGRAM_BINS  # bins of equal width in log over [1e-12, 1e12]
    exact = np.quantile(lv, 0.5, method="inverted_cdf")
    assert abs(math.log(lq["0.5"] / exact)) <= 0.5 * log_width * (1 + 1e-9)


# ------------------------------------------------------------------------------------------- principal angles
def _random_bases(rng, d: int, ks: list[int]) -> list[np.ndarray]:
    return [np.linalg.qr(rng.normal(size=(d, k)))[0] for k in ks]


def _reference_pair(Ua: np.ndarray, Ub: np.ndarray) -> tuple[float, float]:
    """Smallest principal angle (degrees) and affinity, written from Bjorck & Golub: cosines are the singular
    values of Ua^T Ub; where the largest is near 1, the angle comes from the sines instead, the singular values of
    the part of the smaller basis outside the other subspace (arccos of a cosine near 1 loses half the digits)."""
    if Ua.shape[1] < Ub.shape[1]:
        Ua, Ub = Ub, Ua
    d = Ua.shape[0]
    cos = np.linalg.svd(Ua.T @ Ub, compute_uv=False)
    affinity = float(np.sum(cos**2) / Ub.shape[1])
    if Ua.shape[1] + Ub.shape[1] > d:
        return 0.0, affinity
    if cos[0] ** 2 < 0.5:
        return math.degrees(math.acos(cos[0])), affinity
    sines = np.linalg.svd(Ub - Ua @ (Ua.T @ Ub), compute_uv=False)
    return math.degrees(math.asin(min(sines.min(), 1.0))), affinity


def _planted(rng, d: int, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Two 3-dimensional subspaces whose smallest principal angle is exactly ``degrees``."""
    Q = np.linalg.qr(rng.normal(size=(d, 6)))[0]
    t = math.radians(degrees)
    Ua = Q[:, :3]
    Ub = np.column_stack([math.cos(t) * Q[:, 0] + math.sin(t) * Q[:, 3], Q[:, 4], Q[:, 5]])
    return Ua, Ub


@pytest.mark.parametrize("group_columns", [1, 7, 320])  # one class per product, a few, every class of a range
@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("tile_columns", [1, 5, 13, 4096])
def test_tiled_angles_match_the_definition(tile_columns, precision, group_columns, monkeypatch):
    monkeypatch.setattr(angles, "GROUP_COLUMNS", group_columns)
    rng = np.random.default_rng(tile_columns)
    d = 24
    ks = [1, 3, 2, 6, 4, 1, 5, 2, 3]
    bases = _random_bases(rng, d, ks)
    for deg in (1e-5, 0.03, 2.0):  # near-parallel pairs: decided by the sine branch, not arccos
        bases += list(_planted(rng, d, deg))
    r = all_pair_angles(bases, keep_matrices=True, precision=precision, tile_columns=tile_columns)
    K = len(bases)
    # float64 products: the contract (1e-6 relative, far tighter in practice); float32: angles 1e-6, affinity 1e-5
    rtol_aff = 1e-12 if precision == "float64" else 1e-5
    for i, j in itertools.combinations(range(K), 2):
        angle, affinity = _reference_pair(bases[i], bases[j])
        assert r.angle_matrix[i, j] == r.angle_matrix[j, i] == pytest.approx(angle, rel=1e-6, abs=1e-10), (i, j)
        assert r.affinity_matrix[i, j] == pytest.approx(affinity, rel=rtol_aff), (i, j)
    for m, deg in enumerate((1e-5, 0.03, 2.0)):
        a = len(ks) + 2 * m
        assert r.angle_matrix[a, a + 1] == pytest.approx(deg, rel=1e-6)
    upper = r.angle_matrix[np.triu_indices(K, 1)]
    assert r.angle.count == len(upper) and r.angle.lo == upper.min()
    assert r.angle.mean == pytest.approx(upper.mean(), rel=1e-12)
    assert r.metrics["angle_min_min"] == pytest.approx(1e-5, rel=1e-6)


def test_orthogonal_subspaces_are_90_degrees_and_dimension_forced_pairs_are_counted():
    d = 9
    eye = np.eye(d)
    bases = [eye[:, 0:2], eye[:, 2:5], eye[:, 5:7], np.linalg.qr(np.random.default_rng(0).normal(size=(d, 8)))[0]]
    r = all_pair_angles(bases, keep_matrices=True, tile_columns=3)
    np.testing.assert_allclose(r.angle_matrix[:3, :3][np.triu_indices(3, 1)], 90.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.affinity_matrix[:3, :3][np.triu_indices(3, 1)], 0.0, atol=1e-28)
    # the 8-dimensional subspace with any of the 2- or 3-dimensional ones: 10 or 11 > d=9 dimensions
    assert r.forced_zero_pairs == 3
    assert list(r.angle_matrix[3, :3]) == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------- grouped statistics
SIZES = {0: 5, 1: 12, 2: 29, 3: 31, 4: 60, 5: 8, 7: 45}  # d=30: the Gram route below 30 samples, moments above


def _grouped_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    d = 30
    y = np.concatenate([np.full(n, c) for c, n in SIZES.items()])
    rng.shuffle(y)
    C = max(SIZES) + 1
    # low-rank classes of different dimensions, as trained features are
    bases = [np.linalg.qr(rng.normal(size=(d, 3 + c % 4)))[0] for c in range(C)]
    H = 3 * rng.normal(size=(C, d))[y] + np.stack([bases[c] @ rng.normal(size=bases[c].shape[1]) for c in y])
    H += 0.05 * rng.normal(size=H.shape)
    W, b = rng.normal(size=(C, d)), rng.normal(size=C)
    return H, y, W, b


def test_groups_and_the_gram_route_match_the_reference():
    """A budget that forces several groups: classes with n_c < d go the Gram route, the rest the moments route."""
    H, y, W, b = _grouped_case()
    splan = subspace_report.plan(np.bincount(y), 30, nc_probe.MetricSettings(memory_budget=40_000))
    assert not splan.in_pass1 and len(splan.groups) > 2
    assert {p.route for g in splan.groups for p in g} == {"rows", "moments"}
    r = nc_probe.analyze_features(H, y, W, b, memory_budget=40_000)
    assert_matches_reference(r, reference(H, y, W, b), has_W=True, rtol=1e-9)
    assert any("groups" in w for w in r.warnings)


_BASE: dict = {}


@SETTINGS
@given(budget=st.integers(30_000, 200_000), chunk=st.integers(1, 400), tile=st.sampled_from([1, 3, 4096]))
def test_same_report_whatever_the_memory_budget_chunk_and_tile(budget, chunk, tile):
    H, y, W, b = _grouped_case(1)
    if "base" not in _BASE:
        _BASE["base"] = nc_probe.analyze_features(H, y, W, b, linear_probe=True, nearest_subspace=True)
    base = _BASE["base"]
    with mock.patch.object(angles, "TILE_COLUMNS", tile), mock.patch.object(pairs, "TILE_ROWS", tile):
        r = nc_probe.analyze_features(H, y, W, b, memory_budget=budget, chunk_rows=chunk, linear_probe=True,
                                      nearest_subspace=True)
    for key, value in base.metrics.items():  # None: not computed for such features (lidar needs views)
        assert r.metrics[key] == (None if value is None else pytest.approx(value, rel=1e-10, abs=1e-12)), key
    for key in ("rank_energy95", "rank_numerical", "basis_dim"):
        assert r.per_class[key] == base.per_class[key]
    np.testing.assert_allclose(r.per_class["coding_rate_class"], base.per_class["coding_rate_class"], rtol=1e-10)
    np.testing.assert_allclose(r.angles["angle_min"], base.angles["angle_min"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.per_class["mean_cosine"], base.per_class["mean_cosine"], rtol=1e-12, atol=1e-14)


def test_a_budget_below_one_class_says_how_much_is_needed():
    H, y, W, b = _grouped_case()
    with pytest.raises(nc_probe.InputError, match=r"memory_budget.*at least"):
        nc_probe.analyze_features(H, y, W, b, memory_budget=4000)


# ------------------------------------------------------------------------------------------- which classes
def test_min_class_count_is_the_analysis_without_those_rows():
    H, y, W, b = _grouped_case(2)
    r = nc_probe.analyze_features(H, y, W, b, min_class_count=10)
    keep = np.isin(y, [c for c, n in SIZES.items() if n >= 10])
    assert_matches_reference(r, reference(H[keep], y[keep], W, b), has_W=True)
    assert r.inputs["excluded_classes"] == [0, 5]
    assert any("fewer than min_class_count=10" in w for w in r.to_dict()["warnings"])


def test_angle_classes_keep_the_most_frequent_and_their_angles(monkeypatch):
    H, y, W, b = _grouped_case(3)
    full = nc_probe.analyze_features(H, y, W, b)
    top3 = nc_probe.analyze_features(H, y, W, b, angle_classes=3)
    assert top3.angles["class_ids"] == [3, 4, 7]  # n = 31, 60, 45
    pos = [full.angles["class_ids"].index(c) for c in (3, 4, 7)]
    np.testing.assert_allclose(top3.angles["angle_min"], np.asarray(full.angles["angle_min"])[np.ix_(pos, pos)],
                               rtol=1e-12)
    assert top3.per_class["subspace_class_ids"] == full.per_class["subspace_class_ids"]  # ranks for every class
    assert top3.metrics["rate_reduction"] == pytest.approx(full.metrics["rate_reduction"], rel=1e-12)
    none = nc_probe.analyze_features(H, y, W, b, angle_classes=0)
    assert none.metrics["angle_min_mean"] is None and none.angles["angle_min"] is None
    # the automatic choice at large C is said in the report
    monkeypatch.setattr(subspace_report, "AUTO_ANGLE_CLASSES", 4)
    auto = nc_probe.analyze_features(H, y, W, b)
    assert auto.angles["class_ids"] == [2, 3, 4, 7]
    assert any("4 most frequent of 7 classes" in w and "angle_classes" in w for w in auto.to_dict()["warnings"])


# ------------------------------------------------------------------------------------------- the side file
def _many_classes(C: int, d: int = 6, per: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(C), per)
    H = rng.normal(size=(C, d))[y] + 0.1 * rng.normal(size=(len(y), d))
    return H, y


def test_large_matrices_go_to_a_side_file_and_come_back(tmp_path):
    H, y = _many_classes(130)
    r = nc_probe.analyze_features(H, y)
    path = r.save(tmp_path / "report.json")
    data = json.loads(path.read_text())
    assert data["matrices_file"] == "report.matrices.npz"
    assert data["angles"]["angle_min"] is None and data["per_class"]["mean_cosine"] is None
    assert data["pairs"]["angle_min"]["count"] == 130 * 129 // 2
    back = nc_probe.Report.load(path)
    np.testing.assert_array_equal(back.angles["angle_min"], r.angles["angle_min"])
    np.testing.assert_array_equal(back.per_class["mean_cosine"], r.per_class["mean_cosine"])
    np.testing.assert_array_equal(back.angles["subspace_affinity"], r.angles["subspace_affinity"])
    assert back.metrics == data["metrics"]


def test_without_matrices_the_json_stays_small(tmp_path, monkeypatch):
    """Past KEEP_MATRIX_CLASSES no C x C matrix is kept: the JSON grows with C, not C^2."""
    monkeypatch.setattr(subspace_report, "KEEP_MATRIX_CLASSES", 50)
    sizes = {}
    for C in (200, 400):
        H, y = _many_classes(C)
        r = nc_probe.analyze_features(H, y)
        path = r.save(tmp_path / f"r{C}.json")
        assert set(r.side_matrices()) == {"spectrum"}  # per-class rows only, no C x C matrix
        assert r.angles["angle_min"] is None and r.per_class["mean_cosine"] is None
        assert r.pairs["mean_cosine"]["count"] == C * (C - 1) // 2
        sizes[C] = path.stat().st_size
    assert sizes[400] < 2.3 * sizes[200]  # linear in C (2x), far from the 4x of a C x C matrix
    always = nc_probe.analyze_features(*_many_classes(200), matrices="always")
    assert always.angles["angle_min"].shape == (200, 200)


def test_predictions_column_decides_acc_model_and_nc4():
    """The model's own predicted classes stored per row give the numbers W h + b gives."""
    H, y, W, b = _grouped_case(4)
    with_w = nc_probe.analyze_features(H, y, W, b)
    store = nc_probe.FeatureStore.from_arrays(H, y, predictions=np.argmax(H @ W.T + b, axis=1))
    r = nc_probe.analyze_store(store)
    assert r.metrics["acc_model"] == with_w.metrics["acc_model"]
    assert r.metrics["nc4"] == with_w.metrics["nc4"]
    assert r.per_class["acc_model"] == with_w.per_class["acc_model"]
    assert 0 < r.metrics["acc_model"] < 1


def test_pass1_moments_of_small_classes_solved_on_their_range_match_the_reference(monkeypatch):
    """Pass 1's d x d moments of classes with n_c <= d/3 rows are eigendecomposed on their range (rank <= n_c):
    the same report as the independent reference, and the route is really taken."""
    H, y, W, b = _grouped_case(seed=3)
    counts = np.bincount(y)
    assert ((counts > 0) & (counts * spectra.RANGE_ROUTE_FRACTION <= H.shape[1])).any()
    splan = subspace_report.plan(np.bincount(y), H.shape[1], nc_probe.MetricSettings())
    assert splan.in_pass1
    calls = []
    real = spectra._range_eigh_desc
    monkeypatch.setattr(spectra, "_range_eigh_desc", lambda S, rank: calls.append(rank) or real(S, rank))
    r = nc_probe.analyze_features(H, y, W, b)
    assert calls and max(calls) * spectra.RANGE_ROUTE_FRACTION <= H.shape[1]
    assert_matches_reference(r, reference(H, y, W, b), has_W=True, rtol=1e-9)


def test_range_route_spectrum_and_completed_basis():
    """Eigenvalues of a rank-n PSD matrix from its range equal a full solve's; a basis asked wider than the rank is
    completed to orthonormal columns that keep the range."""
    rng = np.random.default_rng(5)
    d, n = 40, 9
    Z = torch.from_numpy(rng.normal(size=(n, d)) * np.linspace(3.0, 0.1, d))
    S = Z.T @ Z / n
    lam, vec = spectra._range_eigh_desc(S, n)
    full, _ = spectra._eigh_desc(S)
    assert lam.shape == (d,) and torch.all(lam[n:] == 0)
    torch.testing.assert_close(lam, full.clamp_min(0), rtol=0, atol=1e-13 * float(full[0]))
    torch.testing.assert_close(S @ vec, vec * lam[:n], rtol=0, atol=1e-12 * float(full[0]))
    wide = spectra._completed(vec, n + 7)
    torch.testing.assert_close(wide.T @ wide, torch.eye(n + 7, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(wide[:, :n], vec, rtol=0, atol=1e-12)
