"""Unit rows (nc_probe.metrics.unit_rows) and the count of exactly-zero feature vectors every update keeps."""

import numpy as np
import pytest
import torch

from nc_probe.metrics.unit_rows import normalize_rows_, unit_rows
from nc_probe.stats.class_stats import ClassStats


def test_rows_whose_squares_underflow_or_overflow_become_unit_rows():
    h = torch.zeros(5, 300, dtype=torch.float64)
    h[0] = 1e-300  # squares underflow: the norm reads 0
    h[1, 7] = -1e200  # squares overflow: the norm reads inf
    h[2] = torch.linspace(-3.0, 5.0, 300, dtype=torch.float64)
    h[3, :2] = torch.tensor([1e-320, 0.0], dtype=torch.float64)  # a subnormal entry
    # h[4] stays zero
    z, zero = unit_rows(h)
    assert zero.tolist() == [False, False, False, False, True]
    assert torch.allclose(torch.linalg.vector_norm(z[:4], dim=1), torch.ones(4, dtype=torch.float64), rtol=1e-15)
    assert torch.allclose(z[0], torch.full((300,), 300**-0.5, dtype=torch.float64), rtol=1e-15)
    assert z[1, 7] == -1.0 and z[3, 0] == 1.0 and not z[4].any()
    assert torch.allclose(z[2], h[2] / torch.linalg.vector_norm(h[2]), rtol=1e-15)
    assert torch.equal(h[0], torch.full((300,), 1e-300, dtype=torch.float64))  # unit_rows copies
    assert torch.equal(normalize_rows_(h), zero) and torch.equal(h, z)  # in place: the same numbers


@pytest.mark.parametrize("subspace_classes", [None, []])
def test_zero_rows_are_counted_exactly(subspace_classes):
    """Exactly-zero feature vectors are counted per class, whether or not the update normalizes rows (without unit
    features it finds them from the centred rows' norms): a zero row beside a large mean, a class of zero rows only
    (mean 0), rows of tiny entries that centre to exactly ``-mean`` but are not zero, and a row whose square
    overflows. The torch path agrees."""
    rng = np.random.default_rng(5)
    d = 300
    h = rng.standard_normal((40, d)) + 1e3
    y = np.repeat([0, 1, 2, 3], 10)
    h[3] = 0.0  # class 0: a zero row, mean about 1e3
    h[10:20] = 0.0  # class 1: zero rows only
    h[21] = 1e-300  # class 2: tiny, centres to -mean exactly, not zero
    h[22] = 0.0
    h[35] = 1e200  # class 3: squares overflow
    h[36] = 0.0
    want = [1, 10, 1, 1]
    for backend in ("auto", "torch"):
        s = ClassStats(4, d, subspace_classes=subspace_classes, total_moments=subspace_classes is None,
                       backend=backend)
        s.update(torch.from_numpy(h), torch.from_numpy(y))
        assert s.zero_norm.tolist() == want, backend
