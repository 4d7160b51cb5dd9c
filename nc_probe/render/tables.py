"""pandas views of a Report: scalar metrics, per-class table, pairwise angles; and writing them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..files import atomic_write_text
from ..metrics import METRIC_DOCS, PER_CLASS_KEYS
from ..report import Report


def metrics_frame(report: Report) -> pd.DataFrame:
    """One row per scalar metric: key, value, meaning."""
    rows = [{"metric": k, "value": v, "meaning": METRIC_DOCS.get(k, "")} for k, v in report.metrics.items()]
    return pd.DataFrame(rows, columns=["metric", "value", "meaning"])


def per_class_frame(report: Report) -> pd.DataFrame:
    """One row per class with samples: n, accuracies, variance, and the subspace metrics where computed."""
    pc = report.per_class
    ids = pc["class_ids"]
    names = report.inputs.get("class_names") or [str(i) for i in ids]
    df = pd.DataFrame({"class_id": ids, "class_name": names, "n": pc["n"]})
    for key in ("acc_model", "acc_ncc", "within_class_variance", "mean_norm", "zero_features"):
        if pc.get(key) is not None:
            df[key] = pc[key]
    sub_ids = pc.get("subspace_class_ids") or []
    if sub_ids:
        sub = pd.DataFrame({"class_id": sub_ids, **{k: pc[k] for k in PER_CLASS_KEYS + ["basis_dim"]}})
        df = df.merge(sub, on="class_id", how="left")
    return df


def angles_frame(report: Report) -> pd.DataFrame:
    """Long form of the pairwise matrices: one row per class pair c < c'."""
    a = report.angles
    cols = ["class_a", "class_b", "angle_min", "subspace_affinity"]
    if not a or a.get("angle_min") is None:
        return pd.DataFrame(columns=cols)
    ids = a["class_ids"]
    rows = [(ids[i], ids[j], a["angle_min"][i][j], a["subspace_affinity"][i][j])
            for i in range(len(ids)) for j in range(i + 1, len(ids))]
    return pd.DataFrame(rows, columns=cols)


def write_tables(report: Report, out_dir) -> list[Path]:
    """Write report.json, metrics.csv, per_class.csv and angles.csv into ``out_dir`` (each file atomically)."""
    out = Path(out_dir)
    written = [report.save(out / "report.json")]
    for name, frame in (("metrics", metrics_frame), ("per_class", per_class_frame), ("angles", angles_frame)):
        written.append(atomic_write_text(out / f"{name}.csv", frame(report).to_csv(index=False)))
    return written
