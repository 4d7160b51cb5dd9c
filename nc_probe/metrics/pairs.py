"""Quantities over class pairs c < c', reduced tile by tile so that no C x C matrix is ever held.

At C = 18,000 classes (a language model's next-token head) the cosine, distance and angle matrices have 162 million
pairs: 1.3 GB each in float64. The metrics need only their reductions, and a report only summaries, so every pair
quantity is streamed through :class:`PairSummary` (mean and variance merged per tile with Chan's formulas, extremes,
the most extreme pairs, and quantiles: exact up to :data:`EXACT_QUANTILE_PAIRS` pairs, else from a fine histogram).
The full matrices are written to a side file only when a caller asks (:class:`MatrixSink`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

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


class Tile:
    """One tile of a C x C pair matrix, rows ``i0..`` and columns ``j0..``: on a diagonal tile (``i0 == j0``) only the
    pairs c < c' count; an off-diagonal tile (``j0 >= i1``) is all pairs. Values are taken from 2-D blocks without
    gathering index arrays (the pairs of a 2048 x 2048 tile are 4 million); :meth:`locate` turns positions in the
    taken values back into class positions, for the few pairs a summary keeps."""

    def __init__(self, i0: int, j0: int, shape: tuple[int, int]):
        self.i0, self.j0, self.shape = i0, j0, shape
        self._upper = _upper_indices(shape[0]) if i0 == j0 else None

    def values(self, block: np.ndarray) -> np.ndarray:
        """The block's pair values as a flat array (a view for an off-diagonal tile)."""
        return block[self._upper] if self._upper is not None else block.reshape(-1)

    def locate(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class positions ``(a, b)``, a < b, of the values at ``idx``."""
        if self._upper is not None:
            r, c = self._upper[0][idx], self._upper[1][idx]
        else:
            r, c = np.divmod(idx, self.shape[1])
        return r + self.i0, c + self.j0

    @property
    def mask(self) -> np.ndarray | None:
        """Boolean mask of the counted entries of a diagonal tile (None: every entry counts)."""
        return None if self._upper is None else np.triu(np.ones(self.shape, dtype=bool), 1)


@functools.lru_cache(maxsize=4)
def _upper_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)


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
    light: bool = False  # only count, mean, std, min and max (no quantiles, no pairs)
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = np.inf
    hi: float = -np.inf
    _values: list = field(default_factory=list)
    _kept: int = 0
    _hist: np.ndarray | None = None
    top: list = field(default_factory=list)  # (value, a, b)

    def add(self, values: np.ndarray, a, b=None) -> None:
        """Add the values of some pairs: ``a``, ``b`` their class positions, or ``a`` a function from positions in
        ``values`` to ``(a, b)`` (e.g. :meth:`Tile.locate`), asked only for the pairs kept."""
        values = np.asarray(values, dtype=np.float64).ravel()
        if len(values) == 0:
            return
        locate = a if b is None else (lambda idx: (a[idx], b[idx]))
        finite = values if bool(np.isfinite(values).all()) else values[np.isfinite(values)]
        k = len(finite)
        if k:
            m = float(finite.mean())
            dev = finite - m
            m2 = float(np.dot(dev, dev))
            total = self.count + k
            delta = m - self.mean  # Chan et al.: merge this tile's mean and squared deviations into the running ones
            self.m2 += m2 + delta * delta * self.count * k / total
            self.mean += delta * k / total
            self.count = total
            self.lo, self.hi = min(self.lo, float(finite.min())), max(self.hi, float(finite.max()))
        if self.light:
            return
        self._keep_for_quantiles(values)
        self._keep_top(values, locate)

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

    def _keep_top(self, values: np.ndarray, locate) -> None:
        """Merge the tile's most extreme finite values into the kept ones, ties broken by the lower class pair, so
        that the kept pairs are those of one global sort whatever the tiling. Once TOP_PAIRS are kept, only values at
        or beyond the current last one are candidates (one comparison pass instead of a partition of the tile)."""
        largest = self.extreme == "largest"
        if len(self.top) >= TOP_PAIRS:
            worst = self.top[-1][0]
            cand = np.flatnonzero(values >= worst if largest else values <= worst)
        else:
            cand = np.arange(len(values))
        cand = cand[np.isfinite(values[cand])]
        if len(cand) > TOP_PAIRS:
            key = values[cand] if largest else -values[cand]
            kth = np.partition(key, len(key) - TOP_PAIRS)[len(key) - TOP_PAIRS]
            better, tied = cand[key > kth], cand[key == kth]
            room = TOP_PAIRS - len(better)
            if len(tied) > room:  # the lowest pairs among the values tied at the threshold
                ta, tb = locate(tied)
                tied = tied[np.lexsort((tb, ta))[:room]]
            cand = np.concatenate([better, tied])
        if len(cand) == 0:
            return
        a, b = locate(cand)
        merged = self.top + [(float(values[i]), int(x), int(y)) for i, x, y in zip(cand, a, b)]
        merged.sort(key=lambda t: (-t[0] if largest else t[0], t[1], t[2]))
        self.top = merged[:TOP_PAIRS]

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
                        for v, a, b in self.top]}


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


def sweep(vectors: np.ndarray, visit: Callable[[Tile, np.ndarray], object], tile_rows: int | None = None) -> None:
    """Call ``visit(tile, G_block)`` for every upper tile of the Gram ``vectors @ vectors.T`` (rows of ``vectors``
    are the classes)."""
    rows = torch.from_numpy(np.ascontiguousarray(vectors))
    for i0, i1, j0, j1 in tiles(len(vectors), tile_rows or TILE_ROWS):
        # torch's product (every core); numpy's BLAS is kept to one thread during an analysis (core.blas_threads)
        block = (rows[i0:i1] @ rows[j0:j1].T).numpy()
        visit(Tile(i0, j0, block.shape), block)
