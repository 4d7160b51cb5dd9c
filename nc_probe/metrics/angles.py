"""Principal angles between every pair of class subspaces, tile by tile: ``angle_min`` and ``subspace_affinity``.

Every pair needs ``P = U_a^T U_b`` (``k_a x k_b``; its top singular value is cos theta_1), so all pairs together cost
one product of the stacked bases with themselves, ``(sum k)^2 d / 2`` multiply-adds, and one ``k x k`` Gram and
eigensolve per pair (at C=1000, k~80 the eigensolves cost about as much as the product). The product is taken per
class against a range of classes (a tile side), in float64 (default) or float32 (``precision``: twice the speed on
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

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from nc_probe.metrics.pairs import PairSummary
from nc_probe.metrics.subspace import SINE_BRANCH_COS2, parallel_map, smallest_angle_of_block

FLOAT32_EXACT_BELOW_DEGREES = 18.5  # float32 products: below it (cos^2 > 0.9) a pair is recomputed in float64
EXACT_COS2 = {"float64": SINE_BRANCH_COS2, "float32": math.cos(math.radians(FLOAT32_EXACT_BELOW_DEGREES)) ** 2}
TILE_COLUMNS = 4096  # stacked basis columns per tile side: a 4096 x 4096 float32 product is 64 MiB
GROUP_COLUMNS = 320  # basis columns of the first side per product (a group of classes: narrower runs at half speed)


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
    ``tile_columns`` (default :data:`TILE_COLUMNS`) bounds the stacked basis columns of a tile side. The list's
    arrays are replaced by views of one stacked float64 matrix, so the bases are held once."""
    K = len(bases)
    d = bases[0].shape[0] if K else 0
    result = AngleResult(PairSummary(bounds=(0.0, 90.0), extreme="smallest"),
                         PairSummary(bounds=(0.0, 1.0), extreme="largest"), 0, 0,
                         np.zeros((K, K)) if keep_matrices else None, np.eye(K) if keep_matrices else None)
    if K < 2:
        return result
    # Classes sorted by basis size, so that the classes of a range pad to nearly their own size.
    k = np.array([b.shape[1] for b in bases])
    order = np.argsort(k, kind="stable")
    ranges = _class_ranges(k[order], tile_columns or TILE_COLUMNS)
    stacked, starts = _padded_stack(bases, order, ranges, d)
    dtype = torch.float32 if precision == "float32" else torch.float64
    U = torch.from_numpy(stacked).to(torch.device(device), dtype)
    for (ra, (a0, a1)), (rb, (b0, b1)) in itertools.combinations_with_replacement(enumerate(ranges), 2):
        widths = int(k[order[a1 - 1]]), int(k[order[b1 - 1]])  # the ranges' widths: their largest k
        rows = U[:, starts[ra]:starts[ra + 1]], U[:, starts[rb]:starts[rb + 1]]
        cos2, ssq, pa, pb = _tile_gram_tops(rows, widths, (a1 - a0, b1 - b0), same=ra == rb)
        _record(result, cos2, ssq, order[pa + a0], order[pb + b0], k, bases, d, EXACT_COS2[precision])
    return result


def _class_ranges(k: np.ndarray, tile_columns: int) -> list[tuple[int, int]]:
    """Ranges of classes (sorted by ascending k) whose columns, padded to the range's largest k, fit a tile side.
    Counting the padding bounds the tiles (with Zipf-sized classes, k runs from 1 to ~90: unpadded ranges made
    2 GB blocks)."""
    ranges, start = [], 0
    for c, kc in enumerate(k):
        if c > start and (c - start + 1) * kc > tile_columns:
            ranges.append((start, c))
            start = c
    ranges.append((start, len(k)))
    return ranges


def _padded_stack(bases: list[np.ndarray], order: np.ndarray, ranges: list[tuple[int, int]],
                  d: int) -> tuple[np.ndarray, np.ndarray]:
    """The bases side by side (float64, d x columns), each zero-padded to its range's largest k, so that a tile's
    product is already laid out as equal blocks: taking the pairs' blocks out of a tile by index gathers cost as
    much as the product itself (measured, k ~ 80). Each ``bases[c]`` becomes a view of its columns. Returns the
    stacked matrix and the first column of each range."""
    widths = [int(bases[order[b - 1]].shape[1]) for _, b in ranges]
    starts = np.concatenate([[0], np.cumsum([(b - a) * w for (a, b), w in zip(ranges, widths)])])
    stacked = np.zeros((d, int(starts[-1])))
    for r, ((a, b), w) in enumerate(zip(ranges, widths)):
        for i, c in enumerate(order[a:b]):
            col = int(starts[r]) + i * w
            kc = bases[c].shape[1]
            stacked[:, col:col + kc] = bases[c]
            bases[c] = stacked[:, col:col + kc]
    return stacked, starts


def _tile_gram_tops(stacks: tuple[torch.Tensor, torch.Tensor], widths: tuple[int, int], counts: tuple[int, int],
                    same: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per class pair of a tile (two ranges' padded stacks of ``counts`` classes, ``widths`` columns per class;
    ``same``: one range, pairs i < j only): the top eigenvalue of the Gram of ``P_ij = U_i^T U_j`` (cos^2 theta_1)
    and ``||P_ij||_F^2``.

    One job per group of consecutive classes i of the first range (about ``GROUP_COLUMNS`` basis columns):
    ``U_B^T [U_i ...]`` is one product, and each class's columns of it, viewed as a batch, are already the blocks
    ``P_ij^T`` (``mb x ma`` each, rows ``mb`` apart); their Grams come from one batched product and their top
    eigenvalues from a batched eigensolver, jobs on every core. One class per product ran at half the flop rate
    (79 columns: 31 GFLOP/s on one core of the 2-core Xeon, 316 columns: 63). Taking blocks out of a whole tile's
    product instead (index gathers, or copies of strided views) cost as much as the product itself (measured,
    k ~ 80). The zero padding changes neither number.
    """
    (UA, UB), (ma, mb), (na, nb) = stacks, widths, counts
    per_job = max(1, GROUP_COLUMNS // max(ma, 1))
    first = [i + 1 if same else 0 for i in range(na)]  # each class's first partner in the second range
    jobs = [(i0, min(i0 + per_job, na)) for i0 in range(0, na, per_job) if first[i0] < nb]

    def group(job: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
        i0, i1 = job
        j0 = first[i0]  # the group's product covers every class's partners (and a few pairs inside the group)
        if min(ma, mb) == 0:  # a range of empty bases: no direction to share
            return [(np.zeros(nb - first[i]), np.zeros(nb - first[i])) for i in range(i0, i1) if first[i] < nb]
        # float64 from here on; the blocks stay where U is (a GPU's batched eigensolver takes them there)
        P = (UB[:, j0 * mb:].T @ UA[:, i0 * ma:i1 * ma]).double()
        out = []
        for i in range(i0, i1):
            if first[i] >= nb:
                continue
            Q = P[(first[i] - j0) * mb:, (i - i0) * ma:(i - i0 + 1) * ma].reshape(nb - first[i], mb, ma)
            G = Q.transpose(1, 2) @ Q if ma <= mb else Q @ Q.transpose(1, 2)
            out.append((torch.linalg.eigvalsh(G)[:, -1].cpu().numpy(),
                        torch.diagonal(G, dim1=1, dim2=2).sum(1).cpu().numpy()))
        return out

    # single-threaded BLAS and LAPACK per thread: every core busy on small problems
    done = [r for rows in (parallel_map(group, jobs) if UA.device.type == "cpu" else map(group, jobs)) for r in rows]
    rows = [i for i in range(na) if first[i] < nb]
    if not rows:
        return np.empty(0), np.empty(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pa = np.concatenate([np.full(nb - first[i], i) for i in rows])
    pb = np.concatenate([np.arange(first[i], nb) for i in rows])
    return np.concatenate([c for c, _ in done]), np.concatenate([s for _, s in done]), pa, pb


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
