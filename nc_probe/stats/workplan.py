"""Which classes the C x C and the N x C work covers, planned from the class counts before any pass.

Most collapse measures are linear in the number of classes K (sums over classes, d x d products) and cover every
class with samples whatever K. Two kinds of work grow faster (``docs/metrics.md``, "Many classes"):

- **class pairs**: ``nc1_cdnv``, ``nc2_maxangle_*``, ``gnc2_log_*`` and the pair summaries of the report sweep the
  K x K Gram matrices: ``K^2 d / 2`` multiply-adds per sweep. Up to :data:`PAIR_WORK` multiply-adds every pair is
  swept; beyond, the pairs among the ``K_p`` most frequent classes;
- **nearest class mean**: ``acc_ncc`` and ``nc4`` score each row against every class mean in pass 2: ``N K d``. Up
  to :data:`SCORE_WORK` every row and every mean; beyond, the rows of the ``K_n`` most frequent classes against
  those classes' means (a language model at 256k tokens, N = 1M, d = 2048 would need 2e14 multiply-adds).

The plan depends on the counts and d only (never on the machine, nor on ``memory_budget``, which costs passes, not
metrics), so a report states it once:
``settings["frequent_classes"]`` (None when every measure covers every class) and a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: multiply-adds of one sweep over the class pairs (K^2 d / 2) beyond which only the most frequent classes' pairs
#: are swept: a 32k-way head at d = 768 with 18k classes present (1.2e11) is in, 100k classes at d = 2048 are not
PAIR_WORK = 1 << 40
#: multiply-adds of pass 2's nearest-class-mean scoring (rows x classes x d) beyond which it covers the most
#: frequent classes only: 200k rows of 18k classes at d = 768 (2.8e12) is in
SCORE_WORK = 1 << 42
PAIR_KEYS = ("nc1_cdnv", "nc2_maxangle_M", "nc2_maxangle_W", "gnc2_log_mean", "gnc2_log_var")


@dataclass(frozen=True)
class WorkPlan:
    """The classes analysed and the subsets the pair sweeps and the nearest-class-mean scoring cover (sorted ids)."""

    ids: np.ndarray
    counts: np.ndarray  # of ids
    pair_ids: np.ndarray
    ncc_ids: np.ndarray

    @property
    def pairs_exact(self) -> bool:
        return len(self.pair_ids) == len(self.ids)

    @property
    def ncc_exact(self) -> bool:
        return len(self.ncc_ids) == len(self.ids)

    def setting(self) -> dict | None:
        """``settings["frequent_classes"]``: how many classes each kind of work covers, None when all."""
        if self.pairs_exact and self.ncc_exact:
            return None
        return {"classes": len(self.ids), "pairs": len(self.pair_ids), "ncc": len(self.ncc_ids)}

    def warnings(self) -> list[str]:
        K, out = len(self.ids), []
        if not self.pairs_exact:
            k = len(self.pair_ids)
            out.append(f"{K:,} classes: {', '.join(PAIR_KEYS)} and the pair summaries cover the "
                       f"{k * (k - 1) // 2:,} pairs among the {k:,} most frequent classes "
                       f"(settings.frequent_classes.pairs; all {K * (K - 1) // 2:,} pairs would take more than "
                       f"{PAIR_WORK:.2g} multiply-adds); every other collapse measure covers every class")
        if not self.ncc_exact:
            k = len(self.ncc_ids)
            rows = int(self.counts[np.isin(self.ids, self.ncc_ids)].sum())
            out.append(f"acc_ncc and nc4 cover the {rows:,} rows of the {k:,} most frequent of {K:,} classes "
                       f"({rows / max(int(self.counts.sum()), 1):.1%} of the rows), each against the nearest of "
                       "those classes' means (settings.frequent_classes.ncc; every class would take more than "
                       f"{SCORE_WORK:.2g} multiply-adds); acc_model covers every row")
        return out


def most_frequent(ids: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most frequent of ``ids`` (ties: the lower id), sorted by id."""
    if k >= len(ids):
        return np.asarray(ids)
    order = np.lexsort((ids, -np.asarray(counts)))
    return np.sort(np.asarray(ids)[order[:k]])


def plan(ids: np.ndarray, counts: np.ndarray, dim: int) -> WorkPlan:
    """The plan for classes ``ids`` with ``counts`` samples (see the module docstring)."""
    ids, counts = np.asarray(ids, dtype=np.int64), np.asarray(counts, dtype=np.int64)
    K, d = len(ids), max(int(dim), 1)
    # pairs: K (K - 1) / 2 d <= PAIR_WORK (the sweep's float64 copies of the K vectors, K d 8 bytes each, are then
    # at most sqrt(2^41 d) 8 bytes: 537 MB at d = 2048)
    k_pairs = max(min(K, int((1 + math.sqrt(1 + 8 * PAIR_WORK / d)) / 2)), min(K, 2))
    # nearest class mean: rows of the k most frequent classes x k x d <= SCORE_WORK
    rows = np.cumsum(np.sort(counts)[::-1]).astype(np.float64)
    work = rows * np.arange(1, K + 1) * d
    k_ncc = max(min(K, int(np.searchsorted(work, SCORE_WORK, side="right"))), min(K, 2))
    return WorkPlan(ids, counts, most_frequent(ids, counts, k_pairs), most_frequent(ids, counts, k_ncc))
