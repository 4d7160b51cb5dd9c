"""What a run pays for and says it paid for: report.timings covers every phase that ran, the opt-in
nearest-subspace rule, the float32-screened linear rules (the same decisions as float64), and one subspace plan
around statistics accumulated elsewhere (no pass 1 read again). No speed is asserted here (bench/ measures it)."""

from __future__ import annotations

import time
from unittest import mock

import numpy as np
import pytest
import torch

import nc_probe
from nc_probe.analysis.pass2 import ScreenedRule
from nc_probe.extract.store import FeatureStore
from nc_probe.metrics import probe


def _top_level(timings: dict) -> dict:
    return {k: v for k, v in timings.items() if "/" not in k and k != "total"}


def test_timings_cover_every_phase_and_add_up_to_the_run(blobs):
    H, y, W, b = blobs(0, {0: 80, 1: 60, 2: 70}, 6)
    t = time.perf_counter()
    report = nc_probe.analyze_features(H.astype(np.float32), y, W, b, linear_probe=True, nearest_subspace=True,
                                       mahalanobis=True)
    wall = time.perf_counter() - t
    timings = report.timings
    assert set(_top_level(timings)) == {"plan", "pass1_stats", "collapse_metrics", "pass2_nc4", "subspace_spectra",
                                        "subspace_angles", "nearest_subspace", "sha256"}
    assert {"pass2_nc4/pca_sample", "pass2_nc4/mahalanobis", "pass2_nc4/linear_probe"} <= set(timings)
    # on the CPU the spectra run between the passes, not on a thread beside pass 2 (whose products use every core)
    assert "subspace_spectra/thread" not in timings
    assert all(v >= 0 for v in timings.values())
    # the phases follow one another inside the run: their sum is the run, less the moments between them
    assert sum(_top_level(timings).values()) <= timings["total"] <= wall
    assert timings["pass2_nc4/mahalanobis"] <= timings["pass2_nc4"]


def test_subspace_groups_and_the_default_run_name_their_phases(blobs):
    H, y, W, b = blobs(1, {0: 10, 1: 12, 2: 15}, 40)  # n_c < d: each class keeps its rows (8 d n_c bytes)
    small = nc_probe.analyze_features(H, y, W, b, memory_budget=20_000)  # a group of its own per class
    assert len([w for w in small.warnings if "groups" in w]) == 1
    assert "pass2_nc4/subspace_group" in small.timings and "subspace_spectra/thread" not in small.timings
    default = nc_probe.analyze_features(H, y, W, b)
    assert "nearest_subspace" not in default.timings and "pass2_nc4/linear_probe" not in default.timings
    assert "pass2_nc4/mahalanobis" not in default.timings
    assert sum(_top_level(default.timings).values()) <= default.timings["total"]


def test_nearest_subspace_is_opt_in_and_recorded(blobs):
    H, y, W, b = blobs(2, {0: 60, 1: 60}, 5)
    off = nc_probe.analyze_features(H, y, W, b)
    on = nc_probe.analyze_features(H, y, W, b, nearest_subspace=True)
    assert off.metrics["acc_nearest_subspace"] is None and off.settings["nearest_subspace"] is False
    assert on.metrics["acc_nearest_subspace"] is not None and on.settings["nearest_subspace"] is True
    assert {k: v for k, v in on.metrics.items() if k != "acc_nearest_subspace"} == \
        {k: v for k, v in off.metrics.items() if k != "acc_nearest_subspace"}
    with pytest.raises(nc_probe.InputError, match="nearest_subspace"):
        nc_probe.MetricSettings(nearest_subspace="yes")


def test_mahalanobis_is_opt_in_recorded_and_its_definition(blobs):
    """acc_ncc_mahalanobis only with mahalanobis=True (a C-row rule of its own in pass 2), then argmin_c
    (h - mu_c)^T Sigma_W^+ (h - mu_c) recomputed here; a report recorded before the setting existed loads with it
    off."""
    H, y, W, b = blobs(5, {0: 40, 1: 55, 2: 35}, 4, spread=2.0)
    off = nc_probe.analyze_features(H, y, W, b)
    on = nc_probe.analyze_features(H, y, W, b, mahalanobis=True)
    assert off.metrics["acc_ncc_mahalanobis"] is None and off.settings["mahalanobis"] is False
    assert on.settings["mahalanobis"] is True and on.settings_typed.metrics.mahalanobis is True
    mus = np.stack([H[y == c].mean(0) for c in range(3)])
    S = np.linalg.pinv((H - mus[y]).T @ (H - mus[y]) / len(y))
    D = np.stack([np.einsum("nd,de,ne->n", H - mus[c], S, H - mus[c]) for c in range(3)], axis=1)
    acc = float(np.mean(np.argmin(D, axis=1) == y))
    assert 0.3 < acc < 1 and on.metrics["acc_ncc_mahalanobis"] == pytest.approx(acc, abs=1e-12)
    assert {k: v for k, v in on.metrics.items() if k != "acc_ncc_mahalanobis"} == \
        {k: v for k, v in off.metrics.items() if k != "acc_ncc_mahalanobis"}
    with pytest.raises(nc_probe.InputError, match="mahalanobis"):
        nc_probe.MetricSettings(mahalanobis=1)
    record = {k: v for k, v in on.to_dict()["settings"].items() if k != "mahalanobis"}
    assert nc_probe.Settings.from_dict(record).metrics.mahalanobis is False


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_screened_rule_decides_as_float64(seed):
    """float32 rows through the screen count exactly what the float64 rule counts, exact ties included (rows on
    the bisector of two means are scored in float64 and go to the lower class, as argmax does)."""
    rng = np.random.default_rng(seed)
    C, d, n = 5, 12, 3000
    means = rng.normal(size=(C, d))
    y = rng.integers(0, C, n)
    H = (means[y] + 0.9 * rng.normal(size=(n, d))).astype(np.float32)
    mid = (means[0] + means[1]).astype(np.float32) / 2  # equidistant from classes 0 and 1 under the Euclidean rule
    H[:40] = mid
    W, bias = probe.nearest_mean_rule(means)
    ids = np.arange(C)
    exact = probe.ProbeTally(W, bias, ids)
    exact.add(0, torch.from_numpy(H).double(), torch.from_numpy(y))
    screened = probe.ProbeTally(W, bias, ids)
    rule = ScreenedRule(screened)
    for s in range(0, n, 700):  # chunks, as pass 2 reads them
        rule.add(s, torch.from_numpy(H[s:s + 700]), torch.from_numpy(y[s:s + 700]))
    assert int(screened.total) == int(exact.total) == n
    assert float(screened.correct) == float(exact.correct)
    keep = np.array([True, True, False, True, True])
    a, b = probe.ProbeTally(W, bias, ids, keep), probe.ProbeTally(W, bias, ids, keep)
    a.add(0, torch.from_numpy(H).double(), torch.from_numpy(y))
    ScreenedRule(b).add(0, torch.from_numpy(H), torch.from_numpy(y))
    assert (int(a.total), float(a.correct)) == (int(b.total), float(b.correct)) and int(a.total) < n


def test_stats_without_subspace_moments_serve_the_analysis(blobs):
    """Statistics accumulated elsewhere (during extraction) that kept no subspace moments: the plan gathers the
    subspace statistics in a group during pass 2 instead of reading pass 1 again, with the same numbers."""
    H, y, W, b = blobs(3, {0: 70, 1: 50, 2: 60, 3: 40}, 7)
    reference = nc_probe.analyze_features(H, y, W, b)
    stats = nc_probe.ClassStats(4, 7, subspace_classes=[]).update(H, y)
    store = FeatureStore.from_arrays(H, y, W=W, b=b)
    with mock.patch("nc_probe.analysis.row_passes.pass1", side_effect=AssertionError("pass 1 read again")):
        report = nc_probe.analyze_store(store, stats=stats)
    for key, value in reference.metrics.items():
        got = report.metrics[key]
        assert (got is None) == (value is None), key
        if value is not None:
            assert got == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert report.per_class["rank_energy95"] == reference.per_class["rank_energy95"]


def test_collapse_metrics_alone_accumulate_no_unit_feature_product(blobs):
    """classes=[]: no subspace metric, and no d x d product of unit features (coding_rate is then null); every
    collapse metric as in the full run."""
    H, y, W, b = blobs(4, {0: 70, 1: 50, 2: 60}, 6)
    full = nc_probe.analyze_features(H, y, W, b, mahalanobis=True)
    alone = nc_probe.analyze_features(H, y, W, b, classes=[], mahalanobis=True)
    assert alone.metrics["coding_rate"] is None and alone.metrics["coding_rate_max"] == full.metrics["coding_rate_max"]
    for key in ("nc1", "nc1_cdnv", "nc2_etf_M", "nc2_etf_W", "nc3", "nc4", "acc_ncc", "acc_ncc_mahalanobis"):
        assert alone.metrics[key] == pytest.approx(full.metrics[key], rel=1e-12, abs=1e-15), key
    stats = nc_probe.ClassStats(3, 6, subspace_classes=[], total_moments=False).update(H, y)
    assert stats.zz_total is None and stats.second_moment_total() is None
    assert nc_probe.ClassStats(3, 6, subspace_classes=[]).update(H, y).second_moment_total() is not None
