"""Linear CKA (Kornblith et al., ICML 2019) between representations of the same samples, streamed in float64."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError

CKA_CHUNK_BYTES = 32 << 20


def _rows(source, start: int, stop: int) -> np.ndarray:
    if hasattr(source, "read"):  # a FeatureStore
        return np.asarray(source.read("features", start, stop), dtype=np.float64)
    return np.asarray(source[start:stop], dtype=np.float64)


def _num_rows(source) -> int:
    return source.num_samples if hasattr(source, "num_samples") else len(source)


def cka_matrix(sources: Sequence, *, chunk_rows: int | None = None) -> np.ndarray:
    """Linear CKA between every pair of representations of the same N samples, in one pass over row chunks.

    ``sources``: arrays (N, d_i) or FeatureStores with the same N (row i of each is the same sample). With centered
    ``X``, ``Y``: ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` (the feature-space form; equal to the
    Gram-matrix HSIC form). The centered cross products are accumulated about running means and merged per chunk
    (Chan et al.), in float64, so memory is ``sum_ij d_i d_j`` and independent of N. A representation without
    variance gives NaN.
    """
    k = len(sources)
    n_rows = {_num_rows(s) for s in sources}
    if len(n_rows) != 1:
        raise InputError(f"CKA needs the same samples in every input, got {sorted(n_rows)} rows",
                         fix="extract the features of the same data set")
    N = n_rows.pop()
    dims = [_rows(s, 0, 1).shape[1] if N else 0 for s in sources]
    rows = chunk_rows or max(64, CKA_CHUNK_BYTES // (8 * max(sum(dims), 1)))
    mean = [np.zeros(d) for d in dims]
    G = {(i, j): np.zeros((dims[i], dims[j])) for i in range(k) for j in range(i, k)}
    n = 0
    for start in range(0, N, rows):
        stop = min(start + rows, N)
        chunk = [_rows(s, start, stop) for s in sources]
        if any(not np.all(np.isfinite(c)) for c in chunk):
            raise InputError(f"features contain NaN or Inf (rows {start}..{stop - 1})",
                             fix="check the model for overflow or drop those samples")
        nb = stop - start
        cm = [c.mean(0) for c in chunk]
        cc = [c - m for c, m in zip(chunk, cm)]
        delta = [b - a for a, b in zip(mean, cm)]
        w = n * nb / (n + nb)
        for (i, j), g in G.items():
            g += cc[i].T @ cc[j]
            if n:
                g += w * np.outer(delta[i], delta[j])
        mean = [a + d * (nb / (n + nb)) for a, d in zip(mean, delta)]
        n += nb
    out = np.eye(k)
    norms = [np.linalg.norm(G[i, i]) for i in range(k)]
    for i in range(k):
        for j in range(i, k):
            denom = norms[i] * norms[j]
            if not denom > 0:
                value = float("nan")
            else:
                value = 1.0 if i == j else min(float(np.square(G[i, j]).sum() / denom), 1.0)
            out[i, j] = out[j, i] = value
    return out


def linear_cka(X, Y, *, chunk_rows: int | None = None) -> float:
    """Linear CKA of two representations (N, d_x) and (N, d_y) of the same samples (arrays or FeatureStores).

    1 for identical representations; invariant to orthogonal transforms and isotropic scaling of either input.
    """
    return float(cka_matrix([X, Y], chunk_rows=chunk_rows)[0, 1])
