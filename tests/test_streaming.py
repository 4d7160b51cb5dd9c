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
