"""Shared fixtures of the metrics-engine tests: small random labelled data and a simplex ETF builder.

Everything is small (N, d <= a few hundred) so each test file runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest


def make_blobs(seed: int, sizes: dict, dim: int, *, spread: float = 1.0, sep: float = 2.0, offset: float = 0.0,
               num_rows: int | None = None):
    """Gaussian classes: ``sizes`` maps label -> n_c (unequal, possibly non-contiguous labels), shuffled rows.

    Returns ``H`` (N, d) float64, ``y`` (N,) int64, ``W`` (num_rows, d) and ``b`` (num_rows,) of a random linear
    classifier with one row per label id ``0..max(label)`` (rows of empty classes included).
    """
    rng = np.random.default_rng(seed)
    rows = num_rows or max(sizes) + 1
    centers = sep * rng.normal(size=(rows, dim)) + offset * rng.normal(size=dim)
    y = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in sizes.items()])
    rng.shuffle(y)
    H = centers[y] + spread * rng.normal(size=(len(y), dim))
    # The classifier: the class centers plus noise, so that it is right most of the time but not always.
    W = centers - centers.mean(0) + 0.8 * sep * rng.normal(size=(rows, dim))
    b = rng.normal(size=rows)
    return H, y, W, b


def simplex_etf(num_classes: int, dim: int, seed: int = 0) -> np.ndarray:
    """Rows: a unit-norm centred simplex ETF in R^d (cos = -1/(C-1)), orthogonal to the all-ones vector."""
    assert dim > num_classes
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(dim, num_classes))
    A -= A.mean(0)  # columns orthogonal to 1_d
    U, _ = np.linalg.qr(A)  # d x C orthonormal, still orthogonal to 1_d
    C = num_classes
    return np.sqrt(C / (C - 1)) * (np.eye(C) - np.ones((C, C)) / C) @ U.T


@pytest.fixture(scope="session")
def blobs():
    """The factory :func:`make_blobs` (session-scoped so hypothesis tests may use it)."""
    return make_blobs


@pytest.fixture(scope="session")
def etf():
    """The factory :func:`simplex_etf`."""
    return simplex_etf
