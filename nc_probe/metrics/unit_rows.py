"""Rows scaled to unit norm, and which rows are exactly zero (they stay zero), for every pass that normalizes.

A float64 row whose entries are all below ~1e-154 has a sum of squares that underflows to 0, one with an entry above
~1e154 a sum that overflows: dividing by that norm would call the first a zero vector and turn the second into
zeros. Such rows (found from the norm itself, so ordinary rows cost nothing extra) are first scaled by their
largest entry; only rows whose entries are all zero count as zero.
"""

from __future__ import annotations

import torch

F64 = torch.float64


def normalize_rows_(h: torch.Tensor) -> torch.Tensor:
    """Scale the rows of ``h`` (floating point) to unit norm in place; returns the mask of exactly-zero rows."""
    norms = torch.linalg.vector_norm(h, dim=1)
    odd = torch.nonzero((norms == 0) | torch.isinf(norms)).flatten()
    norms[odd] = 1.0
    h.div_(norms[:, None])
    zero = torch.zeros(len(h), dtype=torch.bool, device=h.device)
    if len(odd):
        rows = h[odd]
        top = rows.abs().amax(1)
        zero[odd] = top == 0
        rows /= torch.where(top == 0, 1.0, top)[:, None]
        rows /= torch.where(top == 0, 1.0, torch.linalg.vector_norm(rows, dim=1))[:, None]
        h[odd] = rows
    return zero


def unit_rows(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``h`` normalized to unit rows in float64 (a new tensor; zero rows stay zero), and the mask of zero rows."""
    z = h.to(F64, copy=True)
    return z, normalize_rows_(z)


def zero_rows_centred(h: torch.Tensor, sq: torch.Tensor, mean: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """Which rows of ``h`` are exactly zero, from the squared norms ``sq`` of the centred rows ``h - mean[inv]``
    (pass 1 has them already, when it normalizes no rows) instead of a pass over ``h`` (3% of pass 1 at d = 512).
    A zero row centres to ``-mean`` exactly, so its squared norm is the mean's, up to the summation order of two
    norms of the same numbers (relative d * 2^-53); rows within 1e-9 of it (or non-finite) are checked entry by
    entry."""
    msq = torch.linalg.vector_norm(mean, dim=1).square_()[inv]
    maybe = torch.nonzero(((sq - msq).abs_() <= 1e-9 * msq) | ~torch.isfinite(sq)).flatten()
    zero = torch.zeros(len(h), dtype=torch.bool)
    if len(maybe):
        zero[maybe] = (h[maybe] == 0).all(1)
    return zero
