"""Pass 2's float32 screen decides exactly as float64 would: every row it is sure of gets the float64 decision, and
rows near a tie (exact ties included) are handed back to float64."""

from __future__ import annotations

import numpy as np
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
       with_w=st.booleans())
def test_screen_decisions_are_the_float64_decisions(seed, n, d, C, offset, gap, with_w):
    h32, means, W, b = _case(seed, n, d, C, offset, gap)
    mu = torch.from_numpy(means)
    predictor = Predictor(mu, torch.arange(C), torch.from_numpy(W) if with_w else None,
                          torch.from_numpy(b) if with_w else None)
    exact_ncc, exact_model = predictor.positions(torch.from_numpy(h32).double())
    screen = Float32Screen(predictor.cols, predictor.sq, predictor.K, predictor.b)
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
