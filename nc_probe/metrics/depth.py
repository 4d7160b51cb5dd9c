"""Laws over the layers of a network (``docs/metrics.md``, "Layers"): the fitted decay of the separation
fuzziness and where accuracy stops improving.

- He & Su (PNAS 2023, "law of data separation"): the fuzziness ``D_l = Tr(Sigma_W Sigma_B^+)`` decays geometrically
  with depth, ``ln D_l ~ a - rho * l``; :func:`fit_decay` fits it by least squares over the layers (l = 1..L in
  forward order) and reports ``rho``, ``a`` and ``r2``.
- Masarczyk et al. (NeurIPS 2023, the "tunnel effect"): past some layer, more depth stops adding linear
  separability; :func:`plateau_start` is the first layer after which accuracy never rises by more than
  ``tolerance`` (one percentage point by default).
"""

from __future__ import annotations

import math

import numpy as np

PLATEAU_TOLERANCE = 0.01


def fit_decay(depth: list[int], values: list[float | None]) -> dict:
    """``{"rho", "a", "r2", "layers"}`` of ``ln value = a - rho * depth`` over the layers whose value is finite and
    positive (``layers``: how many). Fewer than two such layers give None for all three; ``r2`` is None when every
    ``ln value`` is equal (no variance to explain)."""
    pts = [(float(i), math.log(v)) for i, v in zip(depth, values)
           if v is not None and math.isfinite(v) and v > 0]
    out: dict = {"rho": None, "a": None, "r2": None, "layers": len(pts)}
    if len(pts) < 2:
        return out
    x, y = np.array(pts).T
    xm, ym = x.mean(), y.mean()
    sxx = float(np.sum((x - xm) ** 2))
    slope = float(np.sum((x - xm) * (y - ym)) / sxx)
    a = ym - slope * xm
    ss_tot = float(np.sum((y - ym) ** 2))
    ss_res = float(np.sum((y - (a + slope * x)) ** 2))
    out.update(rho=-slope, a=float(a), r2=(1.0 - ss_res / ss_tot) if ss_tot > 0 else None)
    return out


def plateau_start(values: list[float | None], tolerance: float = PLATEAU_TOLERANCE) -> int | None:
    """The first position i (0-based) with ``max(values[i+1:]) - values[i] <= tolerance``: accuracy stops
    improving after it. None when no value is known."""
    known = [(i, v) for i, v in enumerate(values) if v is not None]
    for k, (i, v) in enumerate(known):
        later = [w for _, w in known[k + 1:]]
        if not later or max(later) - v <= tolerance:
            return i
    return None
