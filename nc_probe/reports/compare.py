"""Side-by-side comparison of several analyses (``nc-probe compare``), and linear CKA between representations.

:func:`compare_reports` lines up the scalar metrics (and per-class means) of reports of the same class set, with
the change of each input against the first (the baseline) and the word for that change ("more collapsed", "less
separated", ...: the direction of each metric in :mod:`nc_probe.metrics.catalog`). When inputs hold features of the
same samples (feature files with identical labels, in the same order), it adds linear CKA (Kornblith et al., ICML
2019) between them (:mod:`nc_probe.metrics.cka`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nc_probe.core.errors import InputError, spell
from nc_probe.core.files import atomic_write_text, json_safe
from nc_probe.data.preprocessing import preprocessing_difference
from nc_probe.metrics import CATALOG, PER_CLASS_KEYS, SCALAR_KEYS, metric
from nc_probe.metrics.cka import cka_matrix, unbiased_cka_matrix
from nc_probe.reports.report import Report

if TYPE_CHECKING:
    import pandas as pd


# ---------------------------------------------------------------------------------------------- resolution
#: A difference between two values of a metric is read as a change only above the metric's resolution,
#: ``max(ABSOLUTE_RESOLUTION[unit], RELATIVE_RESOLUTION * max(|a|, |b|))``: below it the two values are the same
#: for every reading of the metric (float rounding of float32 features, another BLAS or machine, a variance of
#: cosines at 1e-7), and ``compare`` says "no change" (docs/metrics.md, "Comparing reports").
RELATIVE_RESOLUTION = 1e-6
ABSOLUTE_RESOLUTION = {
    "": 1e-6,  # dimensionless collapse measures (nc1, nc2_*, nc3, unc3, vci, ...), whose scale is ~1
    "fraction": 1e-9,  # accuracies and nc4: counts over N, every sample counts
    "degrees": 1e-4,
    "nats": 1e-6,
    "dimensions": 1e-6,  # ranks: whole numbers, or their means over classes
}
UNKNOWN_RESOLUTION = 1e-9  # a key the catalog does not know: float rounding only


def resolution(a: float, b: float, key: str | None = None) -> float:
    """The smallest difference between ``a`` and ``b`` (values of metric ``key``; ``"key (mean)"`` for a mean over
    classes) that counts as a change."""
    entry = metric(key.split(" ")[0]) if key else None
    floor = ABSOLUTE_RESOLUTION.get(entry.unit, UNKNOWN_RESOLUTION) if entry is not None else UNKNOWN_RESOLUTION
    return max(floor, RELATIVE_RESOLUTION * max(abs(a), abs(b)))


def changed(a: float | None, b: float | None, key: str | None = None) -> bool | None:
    """Whether ``b`` differs from ``a`` by more than the metric's :func:`resolution`; None when either is absent."""
    if a is None or b is None:
        return None
    return abs(b - a) > resolution(a, b, key)


def group_warnings(warnings_by_label: Mapping[str, Sequence], every: str | None = None) -> list[str]:
    """Each warning once, led by the labels of the inputs that gave it (``"ce, mcr2: 10 classes have ..."``), in
    the order they first appear; ``every`` replaces the labels when all of several gave it ("every checkpoint")."""
    where: dict[str, list[str]] = {}
    text: dict[str, str] = {}
    for label, warnings in warnings_by_label.items():
        for w in warnings:
            key = spell(str(w))  # a report read back holds its warnings spelled, one made here their placeholders
            text.setdefault(key, str(w))
            names = where.setdefault(key, [])
            if label not in names:
                names.append(label)
    everyone = len(warnings_by_label)
    return [f"{every if every and everyone > 1 and len(names) == everyone else ', '.join(names)}: {text[key]}"
            for key, names in where.items()]


# ---------------------------------------------------------------------------------------------- comparison
@dataclass
class Comparison:
    """Reports side by side. ``rows``: one dict per metric: ``metric``, ``direction`` ("lower"/"higher": the way
    it moves as features get ``word``, e.g. "more collapsed"; None), ``word``, ``values`` by label, and by
    non-baseline label ``deltas``, ``changed`` (False: within the metric's :func:`resolution` of the baseline, "no
    change"; None: a value is absent) and ``moved`` (True: changed in ``direction`` against the baseline, i.e.
    "more <word>"; False: the other way; None: no change or no direction). ``cka``: ``{"labels", "matrix"}`` (None
    entries where two inputs do not share samples) or None. ``warnings``: the comparison's own (settings that
    differ, CKA not computed); :meth:`all_warnings` adds each input's, labelled."""

    reports: dict
    rows: list
    cka: dict | None = None
    warnings: list = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return list(self.reports)

    @property
    def baseline(self) -> str:
        return self.labels[0]

    def input_warnings(self) -> dict[str, list[str]]:
        """Each input's own warnings (its report's), by label."""
        return {lab: [str(w) for w in rep.warnings] for lab, rep in self.reports.items()}

    def all_warnings(self) -> list[str]:
        """The comparison's warnings, then every input's, each once and led by the labels that gave it."""
        return [str(w) for w in self.warnings] + group_warnings(self.input_warnings())

    def frame(self) -> pd.DataFrame:
        """The table as a pandas DataFrame: metric, direction, one column per input, one delta per non-baseline."""
        import pandas as pd

        data = []
        for r in self.rows:
            row = {"metric": r["metric"], "direction": r["direction"], "word": r["word"]}
            row.update({lab: r["values"][lab] for lab in self.labels})
            row.update({f"delta_{lab}": r["deltas"][lab] for lab in self.labels[1:]})
            data.append(row)
        return pd.DataFrame(data)

    def to_dict(self) -> dict:
        return json_safe({
            "labels": self.labels,
            "baseline": self.baseline,
            "metrics": self.rows,
            "cka": self.cka,
            "warnings": [spell(w) for w in self.all_warnings()],
            "input_warnings": {lab: [spell(w) for w in ws] for lab, ws in self.input_warnings().items()},
            "inputs": {lab: rep.inputs for lab, rep in self.reports.items()},
            "settings": {lab: rep.settings for lab, rep in self.reports.items()},
            "reports": {lab: rep.to_dict() for lab, rep in self.reports.items()},
        })

    def save(self, path) -> Path:
        import json

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False))


def _finite(v) -> float | None:
    """A metric value as a finite float; None for absent, true/false, non-finite or non-numbers (a report read back
    is checked on reading; reports built in memory may hold anything)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        v = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def _class_mean(report: Report, key: str) -> float | None:
    column = report.per_class.get(key)
    vals = [v for v in ([] if column is None else column) if v is not None]
    return float(np.mean(vals)) if vals else None


def _describe(ids: list) -> str:
    text = ", ".join(str(i) for i in ids[:8])
    return text + (f", ... ({len(ids)} in all)" if len(ids) > 8 else "")


def check_class_sets(reports: Mapping[str, Report]) -> list[str]:
    """InputError unless every report covers the same classes; warnings for softer mismatches."""
    labels = list(reports)
    base = labels[0]
    base_ids = list(reports[base].inputs.get("class_ids") or reports[base].per_class.get("class_ids") or [])
    warnings = []
    for lab in labels[1:]:
        rep = reports[lab]
        ids = list(rep.inputs.get("class_ids") or rep.per_class.get("class_ids") or [])
        if ids != base_ids:
            only_a = sorted(set(base_ids) - set(ids))
            only_b = sorted(set(ids) - set(base_ids))
            detail = "; ".join(x for x in (f"only in {base}: {_describe(only_a)}" if only_a else "",
                                             f"only in {lab}: {_describe(only_b)}" if only_b else "") if x)
            raise InputError(f"{base} and {lab} have different class sets ({len(base_ids)} vs {len(ids)} classes"
                             f"{'; ' + detail if detail else ''}); their metrics are not comparable",
                             fix="compare analyses of the same classes (e.g. the same {data_classes})")
        if rep.inputs.get("class_names") != reports[base].inputs.get("class_names"):
            warnings.append(f"{base} and {lab} name their classes differently; classes are matched by id")
        if (rep.per_class.get("subspace_class_ids") or []) != (reports[base].per_class.get("subspace_class_ids")
                                                                or []):
            warnings.append(f"{base} and {lab} computed subspace metrics for different classes ({{classes}}); "
                            "ranks, coding rates and angles are not comparable")
        for key in ("eps2", "rank_tol", "subspace_dim"):
            a, b = getattr(reports[base].settings_typed.metrics, key), getattr(rep.settings_typed.metrics, key)
            if a != b:
                warnings.append(f"{base} and {lab} use different {key} ({a} vs {b}); metrics that depend on it "
                                "are not comparable")
        if rep.inputs.get("dim") != reports[base].inputs.get("dim"):
            warnings.append(f"{base} has d={reports[base].inputs.get('dim')} and {lab} d={rep.inputs.get('dim')}: "
                            "coding rates scale with d, read them against coding_rate_max")
        differ = preprocessing_difference(reports[base].inputs.get("preprocessing"), rep.inputs.get("preprocessing"))
        if differ:
            warnings.append(f"{base} and {lab} {differ}")
    return warnings


def compare_reports(reports: Mapping[str, Report], *, features: Mapping | None = None,
                    chunk_rows: int | None = None, unbiased_cka: bool = False) -> Comparison:
    """Compare ``reports`` (label -> Report, the first is the baseline); InputError if their class sets differ.

    ``features``: label -> FeatureStore (or path of a feature file) for the inputs whose features are at hand;
    linear CKA is computed between those that hold the same samples (same N and identical labels in order), from
    the biased HSIC estimator of Kornblith et al. or, with ``unbiased_cka``, the unbiased one (which does not
    drift with N).
    """
    reports = dict(reports)
    if len(reports) < 2:
        raise InputError(f"compare needs at least 2 inputs, got {len(reports)}", fix="pass LABEL=PATH LABEL=PATH")
    warnings = check_class_sets(reports)
    labels = list(reports)
    keys = [k for k in SCALAR_KEYS if any(k in r.metrics for r in reports.values())]
    keys += [k for r in reports.values() for k in r.metrics if k not in keys and k not in CATALOG]
    keys = list(dict.fromkeys(keys))
    rows = []
    for key in keys + [f"{k} (mean)" for k in PER_CLASS_KEYS]:
        if key.endswith(" (mean)"):
            values = {lab: _class_mean(rep, key.split(" ")[0]) for lab, rep in reports.items()}
        else:
            values = {lab: _finite(rep.metrics.get(key)) for lab, rep in reports.items()}
        if all(v is None for v in values.values()):
            continue
        entry = metric(key)
        d, word = (entry.direction, entry.word) if entry is not None else (None, None)
        base = values[labels[0]]
        deltas: dict[str, float | None] = {}
        moves: dict[str, bool | None] = {}
        moved: dict[str, bool | None] = {}
        for lab in labels[1:]:
            v = values[lab]
            delta = deltas[lab] = None if v is None or base is None else v - base
            moves[lab] = changed(base, v, key)
            moved[lab] = None if delta is None or d is None or not moves[lab] else (delta < 0) == (d == "lower")
        rows.append({"metric": key, "direction": d, "word": word, "values": values, "deltas": deltas,
                     "changed": moves, "moved": moved})
    cka = None
    if features:
        cka, cka_warnings = _cka_for(labels, features, chunk_rows, unbiased_cka)
        warnings += cka_warnings
    return Comparison(reports=reports, rows=rows, cka=cka, warnings=warnings)


def _cka_for(labels: list[str], features: Mapping, chunk_rows, unbiased: bool = False
             ) -> tuple[dict | None, list[str]]:
    """CKA between the inputs whose features share samples: grouped by (N, labels), one pass per group."""
    from nc_probe.extract.store import open_store

    stores = {}
    for lab in labels:
        src = features.get(lab)
        if src is not None:
            stores[lab] = src if hasattr(src, "read") else open_store(src)
    missing = [lab for lab in labels if lab not in stores]
    warnings = [f"no CKA for {', '.join(missing)}: no features at hand (a report JSON holds none)"] if missing else []
    if len(stores) < 2:
        return None, warnings
    groups: list[tuple[np.ndarray, list[str]]] = []
    for lab, store in stores.items():
        y = store.labels()
        for key, members in groups:
            if len(key) == len(y) and np.array_equal(key, y):
                members.append(lab)
                break
        else:
            groups.append((y, [lab]))
    matrix = [[1.0 if a == b and a in stores else None for b in labels] for a in labels]
    for _, members in groups:
        if len(members) < 2:
            continue
        m = (unbiased_cka_matrix if unbiased else cka_matrix)([stores[lab] for lab in members], chunk_rows=chunk_rows)
        for i, a in enumerate(members):
            for j, b in enumerate(members):
                matrix[labels.index(a)][labels.index(b)] = _finite(m[i, j])
    if all(len(members) < 2 for _, members in groups):
        warnings.append("no two inputs hold features of the same samples (same N and labels), so there is no CKA")
        return None, warnings
    lone = [members[0] for _, members in groups if len(members) == 1]
    if lone:
        warnings.append(f"no CKA for {', '.join(lone)}: no other input holds features of the same samples "
                        "(same N and labels in the same order)")
    return {"labels": labels, "matrix": matrix, "estimator": "unbiased" if unbiased else "biased"}, warnings
