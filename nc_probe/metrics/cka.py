"""Linear CKA (Kornblith et al., ICML 2019) between representations of the same samples, streamed in float64."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nc_probe.core.errors import InputError

CKA_CHUNK_BYTES = 32 << 20


def _rows(source, start: int, stop: int) -> np.ndarray:
    if hasattr(source, "read"):  # a FeatureStore
        return np.asarray(source.read("features", start, stop), dtype=np.float64)
    return np.asarray(source[start:stop], dtype=np.float64)


def _num_rows(source) -> int:
    return source.num_samples if hasattr(source, "num_samples") else len(source)


def _layout(sources: Sequence, chunk_rows: int | None) -> tuple[int, list[int], int]:
    """``(N, dims, rows per chunk)`` of representations of the same samples (InputError otherwise)."""
    n_rows = {_num_rows(s) for s in sources}
    if len(n_rows) != 1:
        raise InputError(f"CKA needs the same samples in every input, got {sorted(n_rows)} rows",
                         fix="extract the features of the same data set")
    N = n_rows.pop()
    dims = [_rows(s, 0, 1).shape[1] if N else 0 for s in sources]
    return N, dims, chunk_rows or max(64, CKA_CHUNK_BYTES // (8 * max(sum(dims), 1)))


def _chunks(sources: Sequence, N: int, rows: int):
    """Row chunks of every representation, float64, checked for NaN/Inf."""
    for start in range(0, N, rows):
        stop = min(start + rows, N)
        chunk = [_rows(s, start, stop) for s in sources]
        if any(not np.all(np.isfinite(c)) for c in chunk):
            raise InputError(f"features contain NaN or Inf (rows {start}..{stop - 1})",
                             fix="check the model for overflow or drop those samples")
        yield chunk


def cka_matrix(sources: Sequence, *, chunk_rows: int | None = None) -> np.ndarray:
    """Linear CKA between every pair of representations of the same N samples, in one pass over row chunks.

    ``sources``: arrays (N, d_i) or FeatureStores with the same N (row i of each is the same sample). With centered
    ``X``, ``Y``: ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` (the feature-space form; equal to the
    Gram-matrix HSIC form). The centered cross products are accumulated about running means and merged per chunk
    (Chan et al.), in float64, so memory is ``sum_ij d_i d_j`` and independent of N. A representation without
    variance gives NaN.
    """
    k = len(sources)
    N, dims, rows = _layout(sources, chunk_rows)
    mean = [np.zeros(d) for d in dims]
    G = {(i, j): np.zeros((dims[i], dims[j])) for i in range(k) for j in range(i, k)}
    n = 0
    for chunk in _chunks(sources, N, rows):
        nb = len(chunk[0])
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


def unbiased_cka_matrix(sources: Sequence, *, chunk_rows: int | None = None) -> np.ndarray:
    """Linear CKA from the unbiased HSIC estimator (Song et al. 2012; as Nguyen, Raghu & Kornblith 2021 use it),
    between every pair of representations of the same N >= 4 samples, in one pass over row chunks.

    The biased estimator above drifts with N (two independent representations score well above 0 when N is not
    much larger than d); this one does not. With ``K = X X^T`` and ``L = Y Y^T`` with zeroed diagonals,
    ``HSIC_u = [tr(K L) + 1^T K 1 1^T L 1 / ((N-1)(N-2)) - 2 1^T K L 1 / (N-2)] / (N (N-3))``; every term is a sum
    of feature-space products (``X^T Y``, ``sum x``, ``sum ||x||^2 y``, ``sum ||x||^2 ||y||^2``), so memory stays
    ``sum_ij d_i d_j``. The estimator does not change when a constant is added to a representation, so rows are
    shifted by the first chunk's mean before the products (less cancellation). Self-similarity is 1; a value can be
    slightly negative; a representation with no variance gives NaN.
    """
    k = len(sources)
    N, dims, rows = _layout(sources, chunk_rows)
    if N < 4:
        raise InputError(f"the unbiased CKA estimator needs at least 4 samples, got {N}",
                         fix="compare more samples, or use the biased estimator")
    shift: list[np.ndarray] = []
    A = {(i, j): np.zeros((dims[i], dims[j])) for i in range(k) for j in range(i, k)}
    s = [np.zeros(d) for d in dims]
    q = np.zeros(k)  # sum over rows of ||x||^2
    qq = np.zeros((k, k))  # sum over rows of ||x_i||^2 ||x_j||^2
    xq = {(i, j): np.zeros(dims[i]) for i in range(k) for j in range(k)}  # sum over rows of x_i ||x_j||^2
    for chunk in _chunks(sources, N, rows):
        if not shift:
            shift = [c.mean(0) for c in chunk]
        chunk = [c - m for c, m in zip(chunk, shift)]
        norms = np.stack([np.einsum("ij,ij->i", c, c) for c in chunk])  # k x rows
        for (i, j), a in A.items():
            a += chunk[i].T @ chunk[j]
        for i in range(k):
            s[i] += chunk[i].sum(0)
            for j in range(k):
                xq[i, j] += chunk[i].T @ norms[j]
        q += norms.sum(1)
        qq += norms @ norms.T
    hsic = np.zeros((k, k))
    for (i, j), a in A.items():
        trace = float(np.sum(a * a)) - qq[i, j]
        ones_k, ones_l = float(s[i] @ s[i]) - q[i], float(s[j] @ s[j]) - q[j]
        kl = float(s[i] @ a @ s[j]) - float(s[i] @ xq[i, j]) - float(s[j] @ xq[j, i]) + qq[i, j]
        value = (trace + ones_k * ones_l / ((N - 1) * (N - 2)) - 2.0 * kl / (N - 2)) / (N * (N - 3))
        hsic[i, j] = hsic[j, i] = value
    out = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            denom = hsic[i, i] * hsic[j, j]
            out[i, j] = out[j, i] = hsic[i, j] / np.sqrt(denom) if denom > 0 else float("nan")
        if not hsic[i, i] > 0:
            out[i, i] = float("nan")
    return out
