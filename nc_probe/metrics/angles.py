"""Principal angles between every pair of class subspaces, tile by tile: ``angle_min`` and ``subspace_affinity``.

Every pair needs ``P = U_a^T U_b`` (``k_a x k_b``; its top singular value is cos theta_1), so all pairs together cost
one product of the stacked bases with themselves, ``(sum k)^2 d / 2`` multiply-adds: the dominant cost at C=1000.
The product is taken in tiles of class blocks, in float64 (default) or float32 (``precision``: twice the speed on
CPUs, more on GPUs); the decision per pair is always made in float64:

- ``cos^2 theta_1`` is the top eigenvalue of the smaller Gram matrix of ``P`` (float64), from a batched eigensolver
  on every core (a GPU's batched solver on CUDA). Float32 rounding of ``P`` moves cos theta_1 by about 1e-9 for unit
  columns (measured: angles within 2e-8 relative of float64 at d=2048, k=5..26);
- pairs whose cos^2 exceeds ``EXACT_COS2`` are recomputed from the float64 bases, with sines for the smallest angles
  (Bjorck & Golub): there the rounding of a cosine near 1 would be amplified by 1/sin(theta). In float64 that is the
  sine branch below ~5.7 degrees; in float32 every pair below 18.5 degrees;
- the affinity ``||P||_F^2 / min(k_a, k_b)`` is the trace of the same Gram matrix.

Summaries (:class:`~nc_probe.metrics.pairs.PairSummary`) are kept for every pair; the full matrices only when asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nc_probe.metrics.pairs import PairSummary
from nc_probe.metrics.subspace import SINE_BRANCH_COS2, parallel_map, smallest_angle_of_block

FLOAT32_EXACT_BELOW_DEGREES = 18.5  # float32 products: below it (cos^2 > 0.9) a pair is recomputed in float64
EXACT_COS2 = {"float64": SINE_BRANCH_COS2, "float32": math.cos(math.radians(FLOAT32_EXACT_BELOW_DEGREES)) ** 2}
TILE_COLUMNS = 4096  # stacked basis columns per tile side: a 4096 x 4096 float32 product is 64 MiB
PAIR_BATCH = 1024  # pairs per batched eigensolve (a thread's share of a tile)


@dataclass
class AngleResult:
    """Reductions of the angle and affinity matrices, and the matrices themselves when kept."""

    angle: PairSummary
    affinity: PairSummary
    forced_zero_pairs: int
    exact_pairs: int
    angle_matrix: np.ndarray | None = None
    affinity_matrix: np.ndarray | None = None

    @property
    def metrics(self) -> dict:
        return {"angle_min_mean": self.angle.mean if self.angle.count else None,
                "angle_min_min": self.angle.lo if self.angle.count else None}


def all_pair_angles(bases: list[np.ndarray], *, keep_matrices: bool = False, device="cpu",
                    precision: str = "float64", tile_columns: int | None = None) -> AngleResult:
    """``angle_min`` (degrees) and ``subspace_affinity`` of every pair of ``bases`` (d x k_c, orthonormal);
    ``tile_columns`` (default :data:`TILE_COLUMNS`) bounds the stacked basis columns of a tile side. In float64 on
    the CPU the list's arrays are replaced by views of the stacked matrix, so the bases are held once."""
    K = len(bases)
    d = bases[0].shape[0] if K else 0
    result = AngleResult(PairSummary(bounds=(0.0, 90.0), extreme="smallest"),
                         PairSummary(bounds=(0.0, 1.0), extreme="largest"), 0, 0,
                         np.zeros((K, K)) if keep_matrices else None, np.eye(K) if keep_matrices else None)
    if K < 2:
        return result
    # Classes sorted by basis size, so that the blocks of a tile pad to nearly their own size.
    k = np.array([b.shape[1] for b in bases])
    order = np.argsort(k, kind="stable")
    dtype = torch.float32 if precision == "float32" else torch.float64
    stacked = np.concatenate([bases[c] for c in order], axis=1)
    U = torch.from_numpy(stacked).to(torch.device(device), dtype)
    ks = k[order]
    offsets = np.concatenate([[0], np.cumsum(ks)])
    if U.device.type == "cpu" and dtype == torch.float64:
        for i, c in enumerate(order):
            bases[c] = stacked[:, offsets[i]:offsets[i + 1]]
    for (a0, a1), (b0, b1) in _class_tiles(ks, tile_columns or TILE_COLUMNS):
        # the tile stays where U is (a GPU's batched eigensolver takes the pairs there); float64 from here on
        P = (U[:, offsets[a0]:offsets[a1]].T @ U[:, offsets[b0]:offsets[b1]]).double()
        cos2, ssq, pa, pb = _tile_gram_tops(P, ks, offsets, (a0, a1), (b0, b1))
        _record(result, cos2, ssq, order[pa], order[pb], k, bases, d, EXACT_COS2[precision])
    return result


def _class_tiles(k: np.ndarray, tile_columns: int):
    """Ranges of classes (sorted by ascending k) whose columns, padded to the range's largest k, fit a tile side,
    and every upper-triangular pair of ranges. Counting the padding bounds the padded blocks of
    :func:`_tile_gram_tops` (with Zipf-sized classes, k runs from 1 to ~90: unpadded ranges made 2 GB blocks)."""
    ranges, start = [], 0
    for c, kc in enumerate(k):
        if c > start and (c - start + 1) * kc > tile_columns:
            ranges.append((start, c))
            start = c
    ranges.append((start, len(k)))
    for i, a in enumerate(ranges):
        for b in ranges[i:]:
            yield a, b


def _tile_gram_tops(P: torch.Tensor, k: np.ndarray, offsets: np.ndarray, rows: tuple[int, int],
                    cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per class pair of a tile: the top eigenvalue of the Gram of ``P_ab`` (cos^2 theta_1) and ``||P_ab||_F^2``.

    Every class's rows/columns are padded with zeros to the tile's largest k (zeros change neither), so that the
    pairs' blocks form one batch: their Grams come from one batched product, their top eigenvalues from batched
    eigensolvers on every core.
    """
    (a0, a1), (b0, b1) = rows, cols
    ka, kb = k[a0:a1], k[b0:b1]
    ma, mb = int(ka.max()), int(kb.max())
    rpad = _padded_index(ka, offsets[a0:a1] - offsets[a0], ma).to(P.device)
    cpad = _padded_index(kb, offsets[b0:b1] - offsets[b0], mb).to(P.device)
    Pp = torch.nn.functional.pad(P, (0, 1, 0, 1))  # index -1 (the padding) reads the zero row/column
    blocks = Pp[rpad.reshape(-1)][:, cpad.reshape(-1)].reshape(a1 - a0, ma, b1 - b0, mb).permute(0, 2, 1, 3)
    if a0 == b0:
        pa, pb = np.triu_indices(a1 - a0, 1)
    else:
        pa, pb = (x.ravel() for x in np.indices((a1 - a0, b1 - b0)))
    cos2 = np.empty(len(pa))
    ssq = np.empty(len(pa))

    def batch(sel: np.ndarray) -> None:
        B = blocks[torch.from_numpy(pa[sel]).to(P.device), torch.from_numpy(pb[sel]).to(P.device)]
        G = B @ B.transpose(1, 2) if ma <= mb else B.transpose(1, 2) @ B
        cos2[sel] = torch.linalg.eigvalsh(G)[:, -1].cpu().numpy()
        ssq[sel] = torch.diagonal(G, dim1=1, dim2=2).sum(1).cpu().numpy()

    batches = [np.arange(s, min(s + PAIR_BATCH, len(pa))) for s in range(0, len(pa), PAIR_BATCH)]
    if P.device.type == "cpu":
        parallel_map(batch, batches)  # single-threaded LAPACK per thread: every core busy on small problems
    else:
        for sel in batches:
            batch(sel)
    return cos2, ssq, pa + a0, pb + b0


def _padded_index(k: np.ndarray, starts: np.ndarray, width: int) -> torch.Tensor:
    """Row indices of each class's block, padded to ``width`` with -1."""
    idx = np.full((len(k), width), -1, dtype=np.int64)
    for i, (s, n) in enumerate(zip(starts, k)):
        idx[i, :n] = np.arange(s, s + n)
    return torch.from_numpy(idx)


def _record(result: AngleResult, cos2, ssq, pa, pb, k, bases, d: int, exact_cos2: float) -> None:
    """Angles and affinities of a tile's pairs (``pa``, ``pb``: class positions), with the recomputations."""
    small = np.minimum(k[pa], k[pb])
    affinity = np.minimum(ssq / small, 1.0)
    angles = np.degrees(np.arccos(np.sqrt(np.clip(cos2, 0.0, 1.0))))
    forced = (k[pa] + k[pb]) > d
    angles[forced] = 0.0  # two subspaces whose dimensions add up to more than d share a direction
    exact = np.flatnonzero((cos2 > exact_cos2) & ~forced)

    def recompute(p: int) -> tuple[float, float]:
        Ua, Ub = bases[int(pa[p])], bases[int(pb[p])]
        return smallest_angle_of_block(Ua, Ub, (torch.from_numpy(Ua).T @ torch.from_numpy(Ub)).numpy())

    # near-parallel pairs can be many (high-rank classes): on every core, single-threaded LAPACK each
    for p, (angle, aff) in zip(exact, parallel_map(recompute, exact)):
        angles[p], affinity[p] = angle, aff
    result.forced_zero_pairs += int(forced.sum())
    result.exact_pairs += len(exact)
    lo, hi = np.minimum(pa, pb), np.maximum(pa, pb)
    result.angle.add(angles, lo, hi)
    result.affinity.add(affinity, lo, hi)
    if result.angle_matrix is not None and result.affinity_matrix is not None:
        result.angle_matrix[pa, pb] = result.angle_matrix[pb, pa] = angles
        result.affinity_matrix[pa, pb] = result.affinity_matrix[pb, pa] = affinity
