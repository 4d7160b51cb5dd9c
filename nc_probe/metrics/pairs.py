"""Quantities over class pairs c < c', reduced tile by tile so that no C x C matrix is ever held.

At C = 18,000 classes (a language model's next-token head) the cosine, distance and angle matrices have 162 million
pairs: 1.3 GB each in float64. The metrics need only their reductions, and a report only summaries, so every pair
quantity is streamed through :class:`PairSummary` (mean and variance merged per tile with Chan's formulas, extremes,
the most extreme pairs, and quantiles: exact up to :data:`EXACT_QUANTILE_PAIRS` pairs, else from a fine histogram).
The full matrices are written to a side file only when a caller asks (:class:`MatrixSink`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
EXACT_QUANTILE_PAIRS = 1 << 22  # up to 4M pairs (32 MB) the values are kept and quantiles are exact
HISTOGRAM_BINS = 1 << 14
TOP_PAIRS = 20
TILE_ROWS = 2048  # rows per tile: a 2048 x 2048 float64 block is 32 MiB


def tiles(n: int, size: int = TILE_ROWS) -> Iterator[tuple[int, int, int, int]]:
    """``(i0, i1, j0, j1)`` of the upper-triangular tiles (j0 >= i0) covering an n x n matrix."""
    for i0 in range(0, n, size):
        for j0 in range(i0, n, size):
            yield i0, min(i0 + size, n), j0, min(j0 + size, n)


def upper_pairs(i0: int, i1: int, j0: int, j1: int) -> tuple[np.ndarray, np.ndarray]:
    """Local (row, column) indices of the pairs c < c' inside a tile."""
    rows, cols = np.indices((i1 - i0, j1 - j0))
    keep = (rows + i0) < (cols + j0)
    return rows[keep], cols[keep]


@dataclass
class PairSummary:
    """Streaming summary of one pair quantity: count, mean, population std, min, max, quantiles, and the
    ``TOP_PAIRS`` most extreme pairs (largest values, or smallest with ``extreme="smallest"``).

    ``bounds``: the range of the histogram used for quantiles once there are more than ``EXACT_QUANTILE_PAIRS``
    pairs (values outside it land in the end bins); ``log=True`` bins the logarithm (for unbounded positive
    quantities such as the CDNV terms).
    """

    bounds: tuple[float, float] = (-1.0, 1.0)
    extreme: str = "largest"
    log: bool = False
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = np.inf
    hi: float = -np.inf
    _values: list = field(default_factory=list)
    _kept: int = 0
    _hist: np.ndarray | None = None
    _top: list = field(default_factory=list)  # (value, a, b)

    def add(self, values: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """Add the values of some pairs (``a``, ``b``: their class positions)."""
        values = np.asarray(values, dtype=np.float64).ravel()
        n = len(values)
        if n == 0:
            return
        finite = values[np.isfinite(values)]
        m = float(finite.mean()) if len(finite) else 0.0
        m2 = float(np.square(finite - m).sum()) if len(finite) else 0.0
        k = len(finite)
        total = self.count + k
        if total:  # Chan et al.: merge this tile's mean and squared deviations into the running ones
            delta = m - self.mean
            self.m2 += m2 + delta * delta * self.count * k / total
            self.mean += delta * k / total
        self.count = total
        if k:
            self.lo, self.hi = min(self.lo, float(finite.min())), max(self.hi, float(finite.max()))
        self._keep_for_quantiles(values)
        self._keep_top(values, a, b)

    def _keep_for_quantiles(self, values: np.ndarray) -> None:
        if self._hist is None and self._kept + len(values) <= EXACT_QUANTILE_PAIRS:
            self._values.append(values.copy())
            self._kept += len(values)
            return
        if self._hist is None:
            self._hist = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
            for v in self._values:
                self._bin(v)
            self._values = []
        self._bin(values)

    def _bin(self, values: np.ndarray) -> None:
        assert self._hist is not None
        x = values[np.isfinite(values)]
        lo, hi = self._edges()
        if self.log:
            x = np.log(np.maximum(x, 1e-300))
        idx = np.clip(((x - lo) / (hi - lo) * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
        self._hist += np.bincount(idx, minlength=HISTOGRAM_BINS)

    def _edges(self) -> tuple[float, float]:
        lo, hi = self.bounds
        return (float(np.log(lo)), float(np.log(hi))) if self.log else (lo, hi)

    def _keep_top(self, values: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        key = values if self.extreme == "largest" else -values
        key = np.where(np.isfinite(key), key, -np.inf)
        take = min(TOP_PAIRS, len(values))
        idx = np.argpartition(-key, take - 1)[:take] if take < len(values) else np.arange(len(values))
        merged = self._top + [(float(values[i]), int(a[i]), int(b[i])) for i in idx]
        merged.sort(key=lambda t: (-t[0] if self.extreme == "largest" else t[0], t[1], t[2]))
        self._top = merged[:TOP_PAIRS]

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count else float("nan")

    def quantiles(self) -> tuple[dict[str, float], str]:
        """The quantiles of :data:`QUANTILES`, and how they were found."""
        if self._hist is None:
            if not self._values:
                return {}, "exact"
            v = np.concatenate(self._values)
            v = v[np.isfinite(v)]
            return ({f"{q:g}": float(np.quantile(v, q)) for q in QUANTILES} if len(v) else {}), "exact"
        cum = np.cumsum(self._hist) / max(self._hist.sum(), 1)
        lo, hi = self._edges()
        width = (hi - lo) / HISTOGRAM_BINS
        out = {}
        for q in QUANTILES:
            i = int(np.searchsorted(cum, q))
            x = lo + (i + 0.5) * width
            out[f"{q:g}"] = float(np.exp(x) if self.log else x)
        scale = "log-spaced " if self.log else ""
        return out, f"histogram of {HISTOGRAM_BINS} {scale}bins over [{self.bounds[0]:g}, {self.bounds[1]:g}]"

    def to_dict(self, names: list[str], ids: list[int]) -> dict:
        """The report's summary: statistics, quantiles and the most extreme pairs by class id and name."""
        quantiles, method = self.quantiles()
        return {"count": self.count, "mean": self.mean if self.count else None, "std": self.std,
                "min": self.lo if self.count else None, "max": self.hi if self.count else None,
                "quantiles": quantiles, "quantile_method": method, "top_kind": self.extreme,
                "top": [{"a": ids[a], "b": ids[b], "a_name": names[a], "b_name": names[b], "value": v}
                        for v, a, b in self._top]}


class MatrixSink:
    """Collects full C x C matrices tile by tile (symmetric; the diagonal is given), for the report's side file.
    Held in memory: callers create one only for matrices they decided to keep."""

    def __init__(self, n: int, diagonal: float, dtype=np.float64):
        self.diagonal = diagonal
        self.matrix = np.empty((n, n), dtype=dtype)

    def put(self, i0: int, j0: int, block: np.ndarray) -> None:
        i1, j1 = i0 + block.shape[0], j0 + block.shape[1]
        self.matrix[j0:j1, i0:i1] = block.T
        self.matrix[i0:i1, j0:j1] = block
        if i0 == j0:  # a diagonal tile: the diagonal is the given one, not the computed one
            np.fill_diagonal(self.matrix[i0:i1, j0:j1], self.diagonal)


def sweep(vectors: np.ndarray, visit: Callable[[int, int, np.ndarray, np.ndarray, np.ndarray], None],
          tile_rows: int | None = None) -> None:
    """Call ``visit(i0, j0, G_tile, rows, cols)`` for every upper tile of the Gram ``vectors @ vectors.T`` (rows of
    ``vectors`` are the classes); ``rows``/``cols`` index the pairs c < c' inside the tile."""
    for i0, i1, j0, j1 in tiles(len(vectors), tile_rows or TILE_ROWS):
        block = vectors[i0:i1] @ vectors[j0:j1].T
        rows, cols = upper_pairs(i0, i1, j0, j1)
        visit(i0, j0, block, rows, cols)
