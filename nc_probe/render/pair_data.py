"""The class-pair and per-class data the renderers draw from, whatever the report holds: lists (the JSON), numpy
arrays (in memory, or read back from the side file) or None (a matrix not kept). No matplotlib here, so the
terminal and the table exports read it without loading a plotting library.

Which view a pair quantity gets (:func:`pair_view`): its heatmap up to :data:`HEATMAP_LIMIT` classes; above that, or
when the report kept only ``report.pairs[key]`` (the summary), its distribution and its most extreme pairs.
Matrices are read in blocks of :data:`BLOCK_ROWS` rows, never copied whole (a kept 4096 x 4096 matrix is 128 MiB).
"""

from __future__ import annotations

import numpy as np

HEATMAP_LIMIT = 100  # up to this many classes a pair quantity is a heatmap; above it, a distribution and top pairs
CLASS_LIMIT = 100  # up to this many classes, one bar (or line) per class; above it, sorted values or bands
TOP_SHOWN = 20  # the most extreme pairs drawn by name
HIST_BINS = 60
BLOCK_ROWS = 256  # matrix rows read at a time

#: key -> (axis label, what its extreme pairs are, default top_kind when the report has no summary)
PAIR_KEYS = {
    "angle_min": ("smallest principal angle (degrees)", "closest class subspaces", "smallest"),
    "subspace_affinity": ("subspace affinity", "most overlapping class subspaces", "largest"),
    "mean_cosine": ("cosine of centered class means", "most aligned class means", "largest"),
    "cdnv": ("class-distance normalized variance (CDNV)", "least separated class pairs", "largest"),
}
MATRIX_OF = {"angle_min": ("angles", "angle_min"), "subspace_affinity": ("angles", "subspace_affinity"),
             "mean_cosine": ("per_class", "mean_cosine")}


def has_rows(value) -> bool:
    """A per-class list or array that holds something (``bool(array)`` is an error for arrays)."""
    return value is not None and len(value) > 0


def as_values(value) -> np.ndarray:
    """A per-class list (None entries) or array as a float array, NaN where absent."""
    if value is None:
        return np.empty(0)
    if isinstance(value, np.ndarray):
        return value.astype(float, copy=False)
    return np.array([np.nan if v is None else v for v in value], dtype=float)


def as_matrix(value) -> np.ndarray | None:
    """A matrix as a list of rows (None entries) or an array, as a 2-D float array (a float32 array stays float32,
    uncopied); None stays None."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value if value.dtype.kind == "f" else value.astype(float)
    return np.array([[np.nan if v is None else v for v in row] for row in value], dtype=float).reshape(len(value), -1)


def _listed(value) -> list:
    return [] if value is None else list(value)


def pair_ids(report, key: str) -> list:
    """The class ids of a pair quantity's rows: the angle classes for subspace quantities, else every class."""
    section = MATRIX_OF.get(key, ("per_class", ""))[0]
    return _listed((report.angles or {}).get("class_ids")) if section == "angles" else _listed(
        report.per_class.get("class_ids"))


def _raw_matrix(report, key: str):
    section, name = MATRIX_OF.get(key, ("per_class", ""))
    return (getattr(report, section) or {}).get(name) if name else None


def pair_matrix(report, key: str) -> tuple[np.ndarray | None, list]:
    """The report's matrix of a pair quantity (None when not kept, or for ``cdnv``) and the class ids of its rows."""
    return as_matrix(_raw_matrix(report, key)), pair_ids(report, key)


def pair_summary(report, key: str) -> dict | None:
    s = (report.pairs or {}).get(key)
    return s if s and s.get("count") else None


def pair_view(report, key: str) -> str | None:
    """"heatmap" (the matrix, up to HEATMAP_LIMIT classes), "distribution" (a larger matrix or a summary alone), or
    None (nothing to draw)."""
    kept, n = _raw_matrix(report, key) is not None, len(pair_ids(report, key))
    if kept and 2 <= n <= HEATMAP_LIMIT:
        return "heatmap"
    if (kept and n >= 2) or pair_summary(report, key) is not None:
        return "distribution"
    return None


def _upper_blocks(mat: np.ndarray):
    """The finite values above the diagonal, a block of rows at a time."""
    n = mat.shape[0]
    for i0 in range(0, n, BLOCK_ROWS):
        block = mat[i0:i0 + BLOCK_ROWS]
        above = np.arange(n)[None, :] > np.arange(i0, i0 + block.shape[0])[:, None]
        v = block[above]
        yield v[np.isfinite(v)]


def upper_histogram(mat: np.ndarray, bins: int = HIST_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of the pair values (upper triangle, finite) of a symmetric matrix."""
    lo, hi = np.inf, -np.inf
    for v in _upper_blocks(mat):
        if v.size:
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    if not np.isfinite(lo):
        return np.zeros(0, dtype=np.int64), np.zeros(1)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    for v in _upper_blocks(mat):
        counts += np.histogram(v, edges)[0]
    return counts, edges


def upper_mean(mat: np.ndarray) -> float | None:
    """The mean of the finite pair values (upper triangle) of a symmetric matrix; None when there are none."""
    total, count = 0.0, 0
    for v in _upper_blocks(mat):
        total, count = total + float(v.sum(dtype=np.float64)), count + v.size
    return total / count if count else None


def top_from_matrix(mat: np.ndarray, ids: list, names: list[str], kind: str, k: int = TOP_SHOWN) -> list[dict]:
    """The ``k`` most extreme pairs of a matrix (``kind`` "largest" or "smallest"), as ``report.pairs`` lists them."""
    sign = -1.0 if kind == "largest" else 1.0
    n = mat.shape[0]
    best: list[tuple[float, int, int]] = []
    for i0 in range(0, n, BLOCK_ROWS):
        block = sign * mat[i0:i0 + BLOCK_ROWS]
        above = np.arange(n)[None, :] > np.arange(i0, i0 + block.shape[0])[:, None]
        block = np.where(above & np.isfinite(block), block, np.inf)
        flat = block.ravel()
        take = np.argpartition(flat, min(k, flat.size - 1))[:k] if flat.size > k else np.arange(flat.size)
        best += [(float(flat[t]), i0 + int(t) // n, int(t) % n) for t in take if np.isfinite(flat[t])]
        best = sorted(best)[:k]
    return [{"a": ids[a], "b": ids[b], "a_name": names[a], "b_name": names[b], "value": sign * v}
            for v, a, b in best]


def quantile_curve(summary: dict) -> tuple[np.ndarray, np.ndarray]:
    """(values, fractions) of a summary: min at 0, each quantile at its level, max at 1."""
    points = [(summary.get("min"), 0.0)]
    points += sorted((v, float(q)) for q, v in (summary.get("quantiles") or {}).items() if v is not None)
    points.append((summary.get("max"), 1.0))
    points = [(float(v), p) for v, p in points if v is not None]
    points.sort(key=lambda t: (t[1], t[0]))
    return np.array([v for v, _ in points]), np.array([p for _, p in points])
