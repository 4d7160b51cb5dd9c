"""Pass 2's decisions taken in pass 1 (nc_probe.analysis.early_pass2) equal pass 2's: the same counts, NC4, accuracies
and PCA sample, whatever the chunking (means that move a lot between chunks), near ties, exact ties, classes absent
from the first chunks, classes left out, float32 or float64 rows, with or without W."""

from __future__ import annotations

import json

import numpy as np
import pytest

import nc_probe
from nc_probe.analysis import early_pass2


def _without_timings(report) -> dict:
    d = report.to_dict()
    d.pop("timings", None)
    d["settings"] = {k: v for k, v in d["settings"].items() if k != "chunk_rows"}
    return json.loads(json.dumps(d))


def _both(monkeypatch, path, **kw):
    calls = []
    real = early_pass2.EarlyDecisions.tally

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        calls.append(self.rescored)
        return out

    monkeypatch.setattr(early_pass2.EarlyDecisions, "tally", spy)
    early = nc_probe.analyze_file(path, **kw)
    assert calls, "the early path was not taken"
    monkeypatch.setattr(early_pass2, "usable", lambda *a, **k: False)
    classic = nc_probe.analyze_file(path, **kw)
    monkeypatch.undo()
    return early, classic, calls[0]


def _case(seed: int, n: int, d: int, C: int, spread: float, dtype, sort: bool, ties: bool):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(C, d))
    y = rng.integers(0, C, n)
    if sort:
        y = np.sort(y)  # the first chunks see only the first classes: the running means are missing or far off
    h = means[y] + spread * rng.normal(size=(n, d))
    if ties:  # a quarter of the rows at the midpoint of two means (near ties once the means are estimated)
        k = n // 4
        h[:k] = 0.5 * (means[y[:k]] + means[rng.integers(0, C, k)])
    W = rng.normal(size=(C, d))
    b = rng.normal(size=C)
    return h.astype(dtype), y, W, b


@pytest.mark.parametrize("seed, dtype, sort, ties, with_w, chunk", [
    (0, np.float32, False, True, True, 100),
    (1, np.float64, False, True, True, 57),
    (2, np.float32, True, False, True, 200),
    (3, np.float32, False, True, False, 64),
    (4, np.float64, True, True, False, 1000),
    (5, np.float32, False, False, True, 5000),
])
def test_early_decisions_equal_pass_2(tmp_path, monkeypatch, seed, dtype, sort, ties, with_w, chunk):
    h, y, W, b = _case(seed, 3000, 12, 7, 1.5, dtype, sort, ties)
    path = nc_probe.write_store(tmp_path / "f.safetensors", h, y, W=W if with_w else None, b=b if with_w else None)
    early, classic, rescored = _both(monkeypatch, path, chunk_rows=chunk)
    assert _without_timings(early) == _without_timings(classic)
    if chunk >= 1000 and not sort:
        assert rescored < len(y) / 2  # most rows were decided in pass 1 once the means settle
    if ties or sort:
        assert rescored > 0  # the ones near a tie (or read before their class had a mean) were read again


def test_early_decisions_with_a_class_left_out_and_exact_ties(tmp_path, monkeypatch):
    # dyadic values: every float64 score is exact, so exact ties stay exact ties (decided by the lowest class)
    rng = np.random.default_rng(7)
    C, d = 5, 6
    means = rng.integers(-3, 4, size=(C, d)).astype(np.float64)
    y = np.repeat(np.arange(C), 64)
    y[-3:] = C  # a class with 3 rows, left out by min_class_count=10
    mid = 0.5 * (means[y % C] + means[rng.integers(0, C, len(y))])
    h = np.concatenate([mid, 2 * means[y % C] - mid])
    y = np.concatenate([y, y])
    perm = rng.permutation(len(y))
    h, y = h[perm], y[perm]
    W = rng.integers(-2, 3, size=(C + 1, d)).astype(np.float64)
    path = nc_probe.write_store(tmp_path / "t.safetensors", h.astype(np.float32), y, W=W, b=np.zeros(C + 1))
    early, classic, _ = _both(monkeypatch, path, chunk_rows=50, min_class_count=10)
    assert early.inputs["excluded_classes"] == [C]
    assert _without_timings(early) == _without_timings(classic)


def test_early_decisions_are_not_used_when_pass_2_carries_other_rules(tmp_path):
    h, y, W, b = _case(9, 500, 8, 4, 1.0, np.float32, False, False)
    path = nc_probe.write_store(tmp_path / "f.safetensors", h, y, W=W, b=b)
    store = nc_probe.open_store(path)
    from nc_probe.stats.class_stats import ClassStats

    stats = ClassStats(4, 8)
    assert early_pass2.usable(store, stats, np.arange(4), 2**31, others=False)
    assert not early_pass2.usable(store, stats, np.arange(4), 2**31, others=True)
    assert not early_pass2.usable(store, stats, np.arange(4), 1000, others=False)  # the record would not fit
    report = nc_probe.analyze_file(path, linear_probe=True)
    assert "pass2_nc4/linear_probe" in report.timings  # pass 2 ran, with the probe on it
