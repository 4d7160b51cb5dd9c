"""The blocked Gram product of pass 1 (nc_probe.stats.gram.gram_into): equal to X^T X, exactly symmetric."""

import numpy as np
import pytest
import torch

from nc_probe.stats.gram import LEAF, ROW_BLOCKS_UP_TO, gram, gram_into, leaves


# one product, leaf rows (2 to 8 leaves), and wide enough to be halved first (ragged halves, then leaf rows)
@pytest.mark.parametrize("dim", [1, 7, LEAF, LEAF + 1, 2 * LEAF + 3, 512, 777, ROW_BLOCKS_UP_TO + 1, 2101])
@pytest.mark.parametrize("rows", [0, 1, 63, 64, 300])
def test_gram_into_adds_xtx_and_stays_symmetric(dim, rows):
    rng = np.random.default_rng(dim * 1000 + rows)
    start = rng.standard_normal((dim, dim))
    start = start + start.T  # a symmetric accumulator, as the statistics hold
    x = rng.standard_normal((rows, dim)) * rng.uniform(0.1, 10.0, dim)  # columns of unequal scale
    out = torch.from_numpy(start.copy())
    gram_into(out, torch.from_numpy(x))
    gram_into(out, torch.from_numpy(x[::-1].copy()))
    want = start + 2 * (x.T @ x)
    scale = np.abs(start).max() + 2 * (x * x).sum(0).max()
    assert np.abs(out.numpy() - want).max() <= 1e-13 * scale * max(rows, 1)
    assert torch.equal(out, out.T)


@pytest.mark.parametrize("dim", [1, LEAF, LEAF + 1, 512, 777, ROW_BLOCKS_UP_TO, ROW_BLOCKS_UP_TO + 1, 4099])
def test_leaves_tile_the_diagonal(dim):
    """settle mirrors what lies above the leaves and averages the leaves: they must cover the diagonal, in order,
    without gaps or overlaps, none wider than a product the scheme takes in one piece."""
    cuts = leaves(dim)
    assert cuts[0][0] == 0 and cuts[-1][1] == dim
    assert all(b0 == a1 for (_, b0), (a1, _) in zip(cuts, cuts[1:]))
    assert all(0 < b - a <= LEAF for a, b in cuts)


def test_gram_of_float32_rows_cast_to_float64_matches_exact_products():
    # float32 products are exact in float64: only the summation rounds
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 512)).astype(np.float32).astype(np.float64)
    g = gram(torch.from_numpy(x)).numpy()
    want = np.einsum("ni,nj->ij", x, x)  # an independent summation order
    assert np.abs(g - want).max() <= 1e-12 * np.abs(want).max()
    assert np.array_equal(g, g.T)


@pytest.mark.parametrize("tracked", [None, [0, 2]])
def test_class_moments_are_symmetric_whatever_reads_them(tracked):
    """The CPU update accumulates upper halves and settles them when read: every reader sees the full symmetric
    moments, also after more batches, a merge, and a truncation."""
    from nc_probe.stats.class_stats import ClassStats

    rng = np.random.default_rng(0)
    d, C = 400, 3
    h = rng.standard_normal((900, d)).astype(np.float32)
    y = rng.integers(0, C, 900)
    a = ClassStats(C, d, subspace_classes=tracked).update(h[:500], y[:500])
    first = a.moments_of(0).clone()
    assert torch.equal(first, first.T)
    a.update(h[500:700], y[500:700])  # more products after a read
    b = ClassStats(C, d, subspace_classes=tracked).update(h[700:], y[700:])
    a.merge(b)
    z = h.astype(np.float64) / np.linalg.norm(h.astype(np.float64), axis=1, keepdims=True)
    for c in (0, 2):
        m = a.moments_of(c)
        assert torch.equal(m, m.T)
        want = z[y == c].T @ z[y == c]
        assert np.abs(m.numpy() - want).max() <= 1e-12 * np.abs(want).max()
    total = a.second_moment_total()
    assert torch.equal(total, total.T) and np.abs(total.numpy() - z.T @ z).max() <= 1e-12 * len(z)
    assert torch.equal(a.truncated(C).zz, a.zz)


def test_update_buffers_kept_between_batches_change_nothing():
    """The CPU update reuses its work buffers from batch to batch: batches of other sizes and dtypes after a large
    one (buffers larger than needed, float32 then float64 rows) give the statistics of one update of all rows."""
    from nc_probe.stats.class_stats import ClassStats

    rng = np.random.default_rng(1)
    d, C = 300, 4
    h = rng.standard_normal((9000, d)) + 3 * rng.standard_normal((C, d))[rng.integers(0, C, 9000)]
    y = rng.integers(0, C, 9000)
    h32 = h.astype(np.float32)
    parts = ClassStats(C, d)
    parts.update(h32[:8500], y[:8500])  # larger than a stage: every buffer at its largest
    parts.update(h32[8500:8510].astype(np.float64), y[8500:8510])  # a few float64 rows: float64 buffers
    parts.update(h32[8510:], y[8510:])  # float32 again, fewer rows than the buffers hold
    whole = ClassStats(C, d).update(h32.astype(np.float64), y)
    for name in ("count", "mean", "m2", "scatter", "zz"):
        a, b = getattr(parts, name), getattr(whole, name)
        assert torch.allclose(a.double(), b.double(), rtol=1e-10, atol=1e-10 * float(b.abs().max())), name

