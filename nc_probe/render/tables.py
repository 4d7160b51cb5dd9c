"""pandas views of a Report: scalar metrics, per-class table, pairwise angles; and writing them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nc_probe.core.files import atomic_write_text
from nc_probe.render.pair_data import as_matrix
from nc_probe.reports.report import Report


def metrics_frame(report: Report) -> pd.DataFrame:
    """One row per scalar metric: metric, value, unit, direction, word, meaning (:meth:`Report.tidy`)."""
    return report.tidy()


def per_class_frame(report: Report) -> pd.DataFrame:
    """One row per class with samples (:meth:`Report.per_class_frame`)."""
    return report.per_class_frame()


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


def write_tables(report: Report, out_dir) -> list[Path]:
    """Write report.json (and its side file of large matrices), metrics.csv, per_class.csv, angles.csv and
    pairs.csv (the most extreme class pairs of each pair quantity) into ``out_dir`` (each file atomically)."""
    out = Path(out_dir)
    written = [report.save(out / "report.json")]
    for name, frame in (("metrics", metrics_frame), ("per_class", per_class_frame), ("angles", angles_frame),
                        ("pairs", pairs_frame)):
        written.append(atomic_write_text(out / f"{name}.csv", frame(report).to_csv(index=False)))
    return written
