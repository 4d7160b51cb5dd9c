"""A Report's tables as pandas DataFrames (:meth:`Report.tidy`, :meth:`Report.frame`, :meth:`Report.per_class_frame`),
the same views ``LayerReport.tidy``, ``Trajectory.tidy`` and ``Comparison.frame`` give of theirs. The renderers and
the ``--out``/``--format`` exports write these tables, so a notebook and a file hold the same columns.

pandas is imported when a table is asked for, not when a report is read: the command line loads reports without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from nc_probe.metrics import METRIC_DOCS, PER_CLASS_KEYS, metric

if TYPE_CHECKING:
    import pandas as pd


class Report(Protocol):
    """What the tables read of a :class:`~nc_probe.reports.report.Report` (named by its fields, not imported: the
    Report's methods import this module)."""

    inputs: dict
    metrics: dict
    per_class: dict

TIDY_COLUMNS = ["metric", "value", "unit", "direction", "word", "meaning"]
CLASS_COLUMNS = ("acc_model", "acc_ncc", "within_class_variance", "mean_norm", "zero_features")


def tidy_frame(report: Report) -> pd.DataFrame:
    """One row per scalar metric, in the report's order: ``metric``, ``value`` (NaN where the report holds null),
    ``unit``, ``direction`` ("lower"/"higher": the way it moves as the features get ``word``; None when the metric
    has none) and ``meaning`` (the catalog's one line). A key the catalog does not know keeps empty descriptions."""
    import pandas as pd

    rows = []
    for key, value in report.metrics.items():
        entry = metric(key)
        rows.append({"metric": key, "value": _number(value), "unit": entry.unit if entry else "",
                     "direction": entry.direction if entry else None, "word": entry.word if entry else None,
                     "meaning": METRIC_DOCS.get(key, "")})
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def wide_frame(report: Report) -> pd.DataFrame:
    """One row: ``source``, ``layer``, ``num_samples``, ``num_classes``, ``dim``, then one column per scalar metric;
    ``pd.concat`` of several reports' frames is a table of runs, as WeightWatcher's ``analyze()`` gives one of
    layers."""
    import pandas as pd

    i = report.inputs
    row = {"source": i.get("source"), "layer": i.get("layer"), "num_samples": i.get("num_samples"),
           "num_classes": i.get("num_classes"), "dim": i.get("dim")}
    row.update({key: _number(v) for key, v in report.metrics.items() if key not in row})
    return pd.DataFrame([row])


def _number(value) -> float:
    """A metric value as a float column entry: null (an absent metric) is NaN, so the column stays numeric (a report
    built in memory may hold anything; what is not a number is NaN too)."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def column(value, n: int):
    """A per-class column (a list with None entries, or a 1-D array) of ``n`` rows; None when absent or not one."""
    if value is None or len(value) != n or (isinstance(value, np.ndarray) and value.ndim != 1):
        return None
    return value if isinstance(value, np.ndarray) else list(value)


def per_class_frame(report: Report) -> pd.DataFrame:
    """One row per class with samples: class_id, class_name, n, accuracies, variance, and the subspace metrics where
    computed (NaN for classes whose subspace was not computed). Columns the report lacks (None) are left out; lists
    and numpy arrays alike."""
    import pandas as pd

    pc = report.per_class
    ids = list(pc["class_ids"])
    names = class_names(report, ids)
    df = pd.DataFrame({"class_id": ids, "class_name": names, "n": column(pc.get("n"), len(ids))})
    for key in CLASS_COLUMNS:
        col = column(pc.get(key), len(ids))
        if col is not None:
            df[key] = col
    sub_ids = list(pc.get("subspace_class_ids") or [])
    if sub_ids:
        cols = {k: column(pc.get(k), len(sub_ids)) for k in PER_CLASS_KEYS + ["basis_dim"]}
        sub = pd.DataFrame({"class_id": sub_ids, **{k: v for k, v in cols.items() if v is not None}})
        df = df.merge(sub, on="class_id", how="left")
    return df


def class_names(report: Report, ids: list) -> list[str]:
    """The names of class ``ids`` (their ids as text where the report names none)."""
    all_ids = report.inputs.get("class_ids") or ids
    names = report.inputs.get("class_names") or [str(i) for i in all_ids]
    if list(all_ids) == ids and len(names) == len(ids):
        return [str(n) for n in names]
    lookup = dict(zip(all_ids, names))
    return [str(lookup.get(i, i)) for i in ids]
