"""pandas views of a Report: scalar metrics, per-class table, pairwise angles; and writing them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nc_probe.core.files import atomic_write_text
from nc_probe.metrics import METRIC_DOCS, PER_CLASS_KEYS
from nc_probe.render.pair_data import as_matrix
from nc_probe.reports.report import Report


def metrics_frame(report: Report) -> pd.DataFrame:
    """One row per scalar metric: key, value, meaning."""
    rows = [{"metric": k, "value": v, "meaning": METRIC_DOCS.get(k, "")} for k, v in report.metrics.items()]
    return pd.DataFrame(rows, columns=["metric", "value", "meaning"])


def _column(value, n: int):
    """A per-class column (a list with None entries, or a 1-D array) of ``n`` rows; None when absent or not one."""
    if value is None or len(value) != n or (isinstance(value, np.ndarray) and value.ndim != 1):
        return None
    return value if isinstance(value, np.ndarray) else list(value)


def per_class_frame(report: Report) -> pd.DataFrame:
    """One row per class with samples: n, accuracies, variance, and the subspace metrics where computed. Columns the
    report lacks (None) are left out; lists and numpy arrays alike."""
    pc = report.per_class
    ids = list(pc["class_ids"])
    names = _class_names(report, ids)
    df = pd.DataFrame({"class_id": ids, "class_name": names, "n": _column(pc.get("n"), len(ids))})
    for key in ("acc_model", "acc_ncc", "within_class_variance", "mean_norm", "zero_features"):
        col = _column(pc.get(key), len(ids))
        if col is not None:
            df[key] = col
    sub_ids = list(pc.get("subspace_class_ids") or [])
    if sub_ids:
        cols = {k: _column(pc.get(k), len(sub_ids)) for k in PER_CLASS_KEYS + ["basis_dim"]}
        sub = pd.DataFrame({"class_id": sub_ids, **{k: v for k, v in cols.items() if v is not None}})
        df = df.merge(sub, on="class_id", how="left")
    return df


def _class_names(report: Report, ids: list) -> list[str]:
    all_ids = report.inputs.get("class_ids") or ids
    names = report.inputs.get("class_names") or [str(i) for i in all_ids]
    if list(all_ids) == ids and len(names) == len(ids):
        return [str(n) for n in names]
    lookup = dict(zip(all_ids, names))
    return [str(lookup.get(i, i)) for i in ids]


def angles_frame(report: Report) -> pd.DataFrame:
    """Long form of the pairwise matrices: one row per class pair c < c' (built from the matrices at once)."""
    a = report.angles
    cols = ["class_a", "class_b", "angle_min", "subspace_affinity"]
    angle = as_matrix(a.get("angle_min")) if a else None
    if angle is None or angle.shape[0] < 2:
        return pd.DataFrame(columns=cols)
    ids = np.asarray(a["class_ids"])
    i, j = np.triu_indices(angle.shape[0], 1)
    affinity = as_matrix(a.get("subspace_affinity"))
    return pd.DataFrame({"class_a": ids[i], "class_b": ids[j], "angle_min": angle[i, j],
                         "subspace_affinity": affinity[i, j] if affinity is not None else np.nan}, columns=cols)


def pairs_frame(report: Report) -> pd.DataFrame:
    """The most extreme class pairs of each pair quantity (``report.pairs[key]["top"]``), ranked: one row per pair,
    what a reader needs when the C x C matrices were not kept."""
    cols = ["quantity", "rank", "top_kind", "class_a", "class_b", "class_a_name", "class_b_name", "value"]
    rows = [(key, r, s.get("top_kind"), t.get("a"), t.get("b"), t.get("a_name"), t.get("b_name"), t.get("value"))
            for key, s in (report.pairs or {}).items() if isinstance(s, dict)
            for r, t in enumerate(s.get("top") or [], 1)]
    return pd.DataFrame(rows, columns=cols)


def pair_summary_frame(report: Report) -> pd.DataFrame:
    """One row per pair quantity: count, mean, std, min, the quantiles, max and how the quantiles were found."""
    rows = []
    for key, s in (report.pairs or {}).items():
        if isinstance(s, dict):
            q = {f"q{k}": v for k, v in sorted((s.get("quantiles") or {}).items(), key=lambda kv: float(kv[0]))}
            rows.append({"quantity": key, "count": s.get("count"), "mean": s.get("mean"), "std": s.get("std"),
                         "min": s.get("min"), **q, "max": s.get("max"), "quantile_method": s.get("quantile_method")})
    return pd.DataFrame(rows)


def write_tables(report: Report, out_dir) -> list[Path]:
    """Write report.json (and its side file of large matrices), metrics.csv, per_class.csv, angles.csv and
    pairs.csv (the most extreme class pairs of each pair quantity) into ``out_dir`` (each file atomically)."""
    out = Path(out_dir)
    written = [report.save(out / "report.json")]
    for name, frame in (("metrics", metrics_frame), ("per_class", per_class_frame), ("angles", angles_frame),
                        ("pairs", pairs_frame)):
        written.append(atomic_write_text(out / f"{name}.csv", frame(report).to_csv(index=False)))
    return written
