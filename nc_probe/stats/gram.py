"""The Gram products of the statistics: ``x^T x`` in float64, exactly symmetric, with about half the products.

A Gram is symmetric, so half of a full product is redundant; torch has no syrk, and numpy's (OpenBLAS) loses to torch's
matmul (MKL) on a busy machine. :func:`gram_upper_into` computes the upper blocks only: the columns are cut into
leaves of about ``LEAF_WIDTH``, and each leaf's row of blocks, from its diagonal block to the last column, is one
product accumulated in place (``out[a:b, a:] += x[:, a:b]^T x[:, a:]``); the lower blocks are not touched. Above
``ROW_BLOCKS_UP_TO`` columns the matrix is first halved (the upper off-diagonal half is one product, each diagonal
half a Gram again), so that no leaf row becomes a sliver of a very wide product. :func:`settle` then copies the upper
blocks to the lower ones and averages each leaf with its transpose (a gemm need not sum (i, j) and (j, i) alike), so
the result is exactly symmetric.

Measured on the 2-core Intel Xeon (MKL), float64, best of 5: at d = 512 the leaf rows (4 products, 5/8 of the full
product's flops) take 0.73 of a full product's time for 8192 rows (0.515 s for 200k rows against 0.70 s), the
halving scheme they replace (7 products of 128 or 256 columns, the same flops) 0.82-0.84; 0.86-0.94 of the halving
scheme's time from 128 to 8192 rows at d = 256 to 768, equal at 1024, and 1.04-1.17 at 2048 (hence the halving
above 1024). Settling once, after many products, is what keeps the per-class accumulators cheap (mirroring after each
product cost as much as the products saved).
"""

from __future__ import annotations

import functools

import torch

LEAF = 192  # up to this many columns a Gram is one product (narrower leaves run below MKL's best speed)
LEAF_WIDTH = 128  # the width leaves are cut to (d = 512: four leaves; 96 or 160 were 5-8% slower)
ROW_BLOCKS_UP_TO = 1024  # wider matrices are halved first (rows of 16 leaves of 128 ran 4-17% slower at 2048)


def gram(x: torch.Tensor) -> torch.Tensor:
    """``x^T x`` in float64, exactly symmetric (a new matrix)."""
    out = torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
    gram_into(out, x)
    return out


def gram_into(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out += x^T x``, ``out`` (d x d) symmetric before and after."""
    gram_upper_into(out, x)
    settle(out)


def gram_upper_into(out: torch.Tensor, x: torch.Tensor) -> None:
    """Add ``x^T x`` to the upper blocks and the diagonal leaves of ``out``; :func:`settle` completes it."""
    if len(x) == 0:
        return
    if x.shape[1] <= LEAF or len(x) < 64 or x.device.type != "cpu":  # one product (a GPU's is fast as it is)
        out.addmm_(x.T, x)
        return
    _upper(out, x, 0, x.shape[1])


def _upper(out: torch.Tensor, x: torch.Tensor, lo: int, hi: int) -> None:
    if hi - lo <= ROW_BLOCKS_UP_TO:
        for a, b in _leaf_cuts(lo, hi):
            out[a:b, a:hi].addmm_(x[:, a:b].T, x[:, a:hi])
        return
    mid = (lo + hi) // 2
    out[lo:mid, mid:hi].addmm_(x[:, lo:mid].T, x[:, mid:hi])
    _upper(out, x, lo, mid)
    _upper(out, x, mid, hi)


@functools.lru_cache(maxsize=64)
def leaves(d: int) -> tuple[tuple[int, int], ...]:
    """The diagonal leaves ``(a, b)`` of a d-column Gram, as :func:`gram_upper_into` cuts it: every entry above
    them was computed by a product, every entry below them was not."""
    if d <= LEAF:
        return ((0, d),)
    out: list[tuple[int, int]] = []

    def cut(lo: int, hi: int) -> None:
        if hi - lo <= ROW_BLOCKS_UP_TO:
            out.extend(_leaf_cuts(lo, hi))
            return
        mid = (lo + hi) // 2
        cut(lo, mid)
        cut(mid, hi)

    cut(0, d)
    return tuple(out)


def _leaf_cuts(lo: int, hi: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` cut into equal leaves of about ``LEAF_WIDTH`` columns."""
    n = max(1, round((hi - lo) / LEAF_WIDTH))
    edges = [lo + round(i * (hi - lo) / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def settle(out: torch.Tensor) -> None:
    """Make ``out`` (..., d, d) exactly symmetric after :func:`gram_upper_into`: the blocks below the diagonal
    leaves become the transposes of those above, and each leaf the mean of itself and its transpose (a whole matrix
    that was never split, too)."""
    d = out.shape[-1]
    if d <= LEAF or out.device.type != "cpu":
        _average(out)
        return
    for a, b in leaves(d):
        _average(out[..., a:b, a:b])
        if b < d:
            out[..., b:, a:b] = out[..., a:b, b:].mT


def _average(block: torch.Tensor) -> None:
    t = block + block.mT  # fl(a + b) = fl(b + a): exactly symmetric
    block.copy_(t.mul_(0.5))
