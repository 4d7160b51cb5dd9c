"""The public path from ClassStats to metrics, for features streamed inside a training loop (torchmetrics-style:
update per batch, then compute), with no FeatureStore: the same numbers as analyzing the stored features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nc_probe


def test_streamed_statistics_give_the_stored_analysis(blobs):
    H, y, W, b = blobs(5, {0: 40, 1: 55, 2: 31, 4: 60}, 12, offset=30.0)
    reference = nc_probe.analyze_features(H, y, W, b, eps2=1.0)
    stats = nc_probe.ClassStats(len(W), H.shape[1])
    for start in range(0, len(y), 17):  # batches as a training loop would see them
        stats.update(torch.from_numpy(H[start:start + 17]), torch.from_numpy(y[start:start + 17]))
    tally = nc_probe.PredictionTally.for_stats(stats, W, b)
    for start in range(0, len(y), 23):
        tally.update(H[start:start + 23], y[start:start + 23])
    report = nc_probe.report_from_stats(stats, W=W, b=b, tally=tally, eps2=1.0)
    own_pass = ("acc_ncc_mahalanobis", "acc_nearest_subspace")  # rules and passes of their own: analyze only
    assert all(report.metrics[k] is None for k in own_pass)
    for key, value in reference.metrics.items():
        if key in own_pass:
            continue
        got = report.metrics[key]
        assert (got is None) == (value is None), key
        if value is not None:
            assert got == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert report.per_class["rank_energy95"] == reference.per_class["rank_energy95"]
    assert report.inputs["class_ids"] == [0, 1, 2, 4] and report.inputs["empty_classes"] == [3]


def test_without_a_second_pass_nc4_and_accuracies_are_absent(blobs):
    H, y, W, _ = blobs(6, {0: 30, 1: 30, 2: 30}, 6)
    stats = nc_probe.ClassStats(3, 6).update(H, y)
    report = nc_probe.report_from_stats(stats, W=W)
    assert report.metrics["nc4"] is None and report.metrics["acc_ncc"] is None
    assert report.metrics["nc1"] == pytest.approx(nc_probe.analyze_features(H, y, W).metrics["nc1"], rel=1e-10)
    assert np.isfinite(report.metrics["rate_reduction"])


def test_streamed_statistics_of_a_few_tokens_of_a_large_vocabulary(blobs):
    """A 200k-way head of which 5 classes occur: the streamed statistics hold rows for those 5 only, and the report
    is the analysis of the same rows relabelled 0..4, but for bias_collapse, which reads every row of W."""
    H, pos, W5, b5 = blobs(7, {0: 40, 1: 55, 2: 31, 3: 25, 4: 60}, 9, offset=10.0)
    ids = np.array([17, 4_096, 65_535, 150_000, 199_999])
    C = 200_000
    W = np.zeros((C, 9), dtype=np.float32)
    b = np.full(C, -1e3, dtype=np.float32)  # rows of the absent tokens never win: acc_model and nc4 as relabelled
    W[ids], b[ids] = W5, b5
    stats = nc_probe.ClassStats(C, H.shape[1])
    for start in range(0, len(pos), 29):
        stats.update(H[start:start + 29], ids[pos[start:start + 29]])
    assert stats.class_ids.tolist() == ids.tolist() and stats.class_mean.shape == (5, 9)
    tally = nc_probe.PredictionTally.for_stats(stats, W, b)
    tally.update(H, ids[pos])
    report = nc_probe.report_from_stats(stats, W=W, b=b, tally=tally, eps2=1.0)
    reference = nc_probe.analyze_features(H, pos, W[ids], b[ids], eps2=1.0)
    assert report.inputs["class_ids"] == ids.tolist() and report.settings["frequent_classes"] is None
    for key, value in reference.metrics.items():
        if key in ("acc_ncc_mahalanobis", "acc_nearest_subspace", "bias_collapse"):
            continue
        got = report.metrics[key]
        assert (got is None) == (value is None), key
        if value is not None:
            assert got == pytest.approx(value, rel=1e-9, abs=1e-12), key
    mu_G = np.stack([H[pos == k].mean(0) for k in range(5)]).mean(0)
    direct = np.linalg.norm(W.astype(np.float64) @ mu_G + b.astype(np.float64))
    assert report.metrics["bias_collapse"] == pytest.approx(direct, rel=1e-9)
