"""Train vs test in one run (``nc-probe analyze --split train,test``): the checkpoint analysed on two splits of its
data, side by side, and the test-collapse measures of Hui et al. 2022 (``docs/metrics.md``, "Train and test"): the
second split's features measured against the FIRST split's class means.

- ``nc1_test = Tr(Sigma_W^test Sigma_B^{train +}) / C``, ``Sigma_W^test`` the test rows' scatter about the train
  means (the test split's own scatter plus ``n_c (mu_c^test - mu_c^train)(...)^T`` per class), over the test rows of
  classes the train split has;
- ``nc1_cdnv_test``: the CDNV with each class's test variance about its train mean, over the train means' distances;
- ``acc_ncc_test``: the nearest train class mean's accuracy on the test rows (a test row of a class the train split
  lacks is never right);
- ``nc1_test_ratio``, ``nc1_cdnv_test_ratio``, ``acc_ncc_test_ratio``: each divided by the train split's own value.

Both splits are extracted once each (their features kept in a temporary folder for the test-collapse pass).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from nc_probe.core.errors import InputError
from nc_probe.core.progress import phase, shows_progress
from nc_probe.core.settings import Settings, checkpoint_settings
from nc_probe.extract.store import FeatureStore, open_store
from nc_probe.metrics import collapse, probe
from nc_probe.reports.compare import Comparison, compare_reports
from nc_probe.reports.report import Report
from nc_probe.stats.class_stats import ClassStats

TEST_KEYS = ("nc1_test", "nc1_cdnv_test", "acc_ncc_test", "nc1_test_ratio", "nc1_cdnv_test_ratio",
             "acc_ncc_test_ratio")
READ_ROWS = 16384


def parse_splits(split) -> list[str] | None:
    """``"train,test"`` -> ``["train", "test"]``; a single split (or None) -> None."""
    if split is None or "," not in str(split):
        return None
    parts = [p.strip() for p in str(split).split(",")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise InputError(f"{{split}} {split!r} names {len(parts)} splits", fix="give one split, or two: "
                         "{split=train,test} (the first is the reference for the test-collapse measures)")
    return parts


@shows_progress
def analyze_splits(path, settings: Settings | None = None, *, splits=("train", "test"), progress: bool = False,
                   **shortcuts) -> Comparison:
    """The checkpoint analysed on each of two splits (the first the reference), as a Comparison whose second
    report also holds the test-collapse measures (:data:`TEST_KEYS`)."""
    from nc_probe.analysis.pipeline import analyze_checkpoint

    s = checkpoint_settings(settings, **shortcuts)
    ref, other = splits
    reports: dict[str, Report] = {}
    with tempfile.TemporaryDirectory(prefix="nc-probe-splits-") as tmp:
        files: dict[str, Path] = {}
        for name in (ref, other):
            files[name] = Path(tmp) / f"{len(files)}.safetensors"
            with phase(f"split {name}"):
                reports[name] = analyze_checkpoint(path, s.with_(split=name), save_features=files[name],
                                                   progress=progress)
            reports[name].inputs["features_file"] = None  # removed when this returns
        train, test = open_store(files[ref]), open_store(files[other])
        with phase(f"{other} against {ref}'s class means"):
            extra, note = heldout_collapse(train, test, reports[ref].metrics, s.metrics.chunk_rows)
    reports[other].metrics.update(extra)
    reports[other].inputs["reference_split"] = ref
    if note:
        reports[other].warnings.append(note)
    return compare_reports(reports)


def _class_stats(store: FeatureStore, num_classes: int, rows: int, observer=None) -> ClassStats:
    """The ClassStats of every row of ``store``; ``observer`` (a pass observer) sees the same rows."""
    stats = ClassStats(num_classes, store.dim)
    for chunk in store.iter_chunks(rows, reuse=True):
        h, y = torch.from_numpy(np.asarray(chunk.features, dtype=np.float64)), torch.from_numpy(chunk.labels)
        stats.update(h, y)
        if observer is not None:
            observer.add(chunk.start, h, y)
        del chunk
    return stats


def heldout_collapse(train: FeatureStore, test: FeatureStore, train_metrics: dict,
                     chunk_rows: int | None = None) -> tuple[dict, str | None]:
    """The measures of :data:`TEST_KEYS` for ``test`` against ``train``'s class means, and a note when some test
    rows belong to classes the train split lacks."""
    rows = chunk_rows or READ_ROWS
    C = int(max(train.labels().max(initial=0), test.labels().max(initial=0))) + 1
    tr = _class_stats(train, C, rows)
    n_tr = tr.count.numpy()
    ids = np.flatnonzero(n_tr > 0)
    if len(ids) < 2:
        raise InputError("the reference split has fewer than 2 classes", fix="use a larger reference split")
    mu_tr = tr.mean.numpy()
    # the test split in one pass: its statistics, and the nearest train mean's decisions (argmin ||h - mu_c||;
    # ties to the lowest class)
    ncc = probe.ProbeTally(*probe.nearest_mean_rule(mu_tr[ids]), ids)
    te = _class_stats(test, C, rows, ncc)
    n_te, mu_te = te.count.numpy(), te.mean.numpy()
    M = collapse.centered_means(mu_tr[ids])  # d x C, train
    both = ids[n_te[ids] > 0]
    diff = mu_te[both] - mu_tr[both]
    # the test rows' scatter about the train means: their own scatter (all test classes, so subtract the classes
    # the train split lacks) plus each class's mean offset
    scatter = te.scatter.numpy() + (diff.T * n_te[both]) @ diff
    lacking = np.flatnonzero((n_te > 0) & (n_tr == 0))
    note = None
    if len(lacking):
        scatter = scatter - _scatter_of(test, lacking, mu_te, rows)
        note = (f"{int(n_te[lacking].sum())} test rows of {len(lacking)} classes the reference split lacks count "
                "as wrong in acc_ncc_test and are left out of nc1_test and nc1_cdnv_test")
    N_te = int(n_te[both].sum())
    out: dict = dict.fromkeys(TEST_KEYS)
    if N_te:
        out["nc1_test"] = collapse.nc1(scatter, N_te, M)
        if len(both) >= 2:
            variances = (te.m2.numpy()[both] + n_te[both] * np.square(diff).sum(1)) / n_te[both]
            sub = collapse.centered_means(mu_tr[both])
            out["nc1_cdnv_test"] = collapse.mean_pair_metrics(sub, variances).metrics["nc1_cdnv"]
    out["acc_ncc_test"] = ncc.accuracy
    for key in ("nc1", "nc1_cdnv", "acc_ncc"):
        a, b = out[f"{key}_test"], train_metrics.get(key)
        out[f"{key}_test_ratio"] = a / b if a is not None and b else None
    return out, note


def _scatter_of(store: FeatureStore, classes: np.ndarray, means: np.ndarray, rows: int) -> np.ndarray:
    """The within-class scatter of ``classes``' rows alone."""
    S = np.zeros((store.dim, store.dim))
    for chunk in store.iter_chunks(rows, reuse=True):
        sel = np.isin(chunk.labels, classes)
        if sel.any():
            h = np.asarray(chunk.features, dtype=np.float64)[sel] - means[chunk.labels[sel]]
            S += h.T @ h
        del chunk
    return S
