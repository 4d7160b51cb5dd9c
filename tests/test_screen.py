"""Pass 2's float32 screen decides exactly as float64 would: every row it is sure of gets the float64 decision, and
rows near a tie (exact ties included) are handed back to float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nc_probe.stats.predictions import Predictor
from nc_probe.stats.screen import Float32Screen


def _case(seed: int, n: int, d: int, C: int, offset: float, gap: float):
    """Rows placed at the midpoint of two class means (plus ``gap`` towards one), and random rows."""
    rng = np.random.default_rng(seed)
    means = offset + rng.normal(size=(C, d))
    W = rng.normal(size=(C, d))
    b = rng.normal(size=C)
    a, c = rng.integers(0, C, n), rng.integers(0, C, n)
    t = 0.5 + gap * rng.choice([-1, 0, 1], size=n)
    h = t[:, None] * means[a] + (1 - t[:, None]) * means[c]
    h[: n // 3] += rng.normal(size=(n // 3, d))
    return h.astype(np.float32), means, W, b


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), n=st.integers(1, 300), d=st.integers(2, 40), C=st.integers(2, 30),
       offset=st.sampled_from([0.0, 10.0, 1e3]), gap=st.sampled_from([0.0, 1e-9, 1e-6, 1e-3]),
       with_w=st.booleans(), rounded=st.booleans())
def test_screen_decisions_are_the_float64_decisions(seed, n, d, C, offset, gap, with_w, rounded):
    h32, means, W, b = _case(seed, n, d, C, offset, gap)
    h = h32.astype(np.float64)
    if rounded:  # float64 rows that float32 cannot hold: the screen scores them rounded
        h *= 1 + 1e-8 * np.random.default_rng(seed).standard_normal(h.shape)
        h32 = h.astype(np.float32)
    mu = torch.from_numpy(means)
    predictor = Predictor(mu, torch.arange(C), torch.from_numpy(W) if with_w else None,
                          torch.from_numpy(b) if with_w else None)
    exact_ncc, exact_model = predictor.positions(torch.from_numpy(h))
    screen = Float32Screen(predictor.cols, predictor.sq, predictor.K, predictor.b, rounded_input=rounded)
    out = screen(torch.from_numpy(h32))
    assert out is not None
    ncc, model, unsure = out
    sure = np.ones(n, dtype=bool)
    sure[unsure.numpy()] = False
    assert np.array_equal(ncc.numpy()[sure], exact_ncc.numpy()[sure])
    if with_w:
        assert np.array_equal(model.numpy()[sure], exact_model.numpy()[sure])
    else:
        assert model is None


@pytest.mark.parametrize("dtype, offset", [(np.float32, 2.0**11), (np.float64, 2.0**24)])
def test_pass2_decisions_with_exact_ties_equal_an_exact_count(dtype, offset):
    """Small integers: every float64 score is exact, so ties are exact and both rules take the lowest class. The
    float32 screens of pass 2 (the joint one of the means and W, and the separate ones) must hand every tie back to
    float64 and count what exact arithmetic counts."""
    import nc_probe

    rng = np.random.default_rng(5)
    C, d = 6, 8
    # float32 rows, offset 2^11: float32 products round (so the screens must hand ties back), float64 ones stay
    # exact. Float64 rows, offset 2^24: the halves do not even fit a float32 (the screen rounds the rows first)
    means = offset + rng.integers(-3, 4, size=(C, d)).astype(np.float64)
    W = rng.integers(-2, 3, size=(C, d)).astype(np.float64)
    W[:, -1] -= W.sum(1)  # rows summing to 0: the offset adds nothing to the scores, which keeps their ties
    b = rng.integers(-2, 3, size=C).astype(np.float64)
    # per class, 32 rows at the midpoint to another class's mean (exact ties of the nearest mean, unless a third
    # mean is nearer) and their reflections through the class's own mean: the class means are exactly `means`
    y = np.repeat(np.arange(C), 32)
    mid = 0.5 * (means[y] + means[rng.integers(0, C, len(y))])
    mid[::3] += rng.integers(-1, 2, size=(len(mid[::3]), d))
    h = np.concatenate([mid, 2 * means[y] - mid])
    y = np.concatenate([y, y])
    perm = rng.permutation(len(y))
    h, y = h[perm], y[perm]
    mu = np.stack([h[y == k].mean(0) for k in range(C)])
    assert np.array_equal(mu, means)
    dist = ((h[:, None, :] - mu[None]) ** 2).sum(-1)
    ncc = np.argmin(dist, 1)
    scores = h @ W.T + b
    model = np.argmax(scores, 1)
    ties = lambda v: int(((v == v.max(1, keepdims=True)).sum(1) > 1).sum())  # noqa: E731
    assert ties(-dist) > 50 and ties(scores) > 5  # the case has many exact ties of both rules
    assert np.array_equal(h.astype(dtype), h)  # the case is what the analysis reads
    report = nc_probe.analyze_features(h.astype(dtype), y, W, b, classes=[])
    m = report.metrics
    assert m["acc_ncc"] == pytest.approx(np.mean(ncc == y), abs=1e-12)
    assert m["acc_model"] == pytest.approx(np.mean(model == y), abs=1e-12)
    assert m["nc4"] == pytest.approx(np.mean(model != ncc), abs=1e-12)
