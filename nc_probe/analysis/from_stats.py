"""From ClassStats to metrics: the collapse metrics (pass 1's statistics alone), the per-class table and the
warnings the data's shape calls for; the subspace metrics are planned and finished in
:mod:`nc_probe.analysis.subspace_report`.

This is also the engine of features streamed in a training loop with no FeatureStore
(:class:`nc_probe.training.metric.NeuralCollapse` wraps it, torchrun included): ``stats.update(h, y)`` per batch,
then :func:`report_from_stats`. NC4 and the accuracies need a second pass against the final (combined) means.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from nc_probe._version import __version__
from nc_probe.analysis import subspace_report
from nc_probe.analysis.pca import TotalCovariance, total_covariance
from nc_probe.analysis.sample_size import sample_size_warnings
from nc_probe.core import distributed
from nc_probe.core.errors import InputError
from nc_probe.core.settings import MetricSettings, metric_settings
from nc_probe.metrics import blockwise, collapse, label_free, literature, subspace
from nc_probe.metrics.pairs import PairSummary
from nc_probe.reports.report import Report
from nc_probe.stats import workplan
from nc_probe.stats.class_stats import ClassStats
from nc_probe.stats.predictions import PredictionTally

NC2_KINDS = ("equinorm", "equiangle", "maxangle", "etf")


#: K x d (classes analysed x dimension) up to which the centred means and W's rows are held whole and the direct
#: forms of the measures are used; beyond, :mod:`nc_probe.metrics.blockwise` takes them a block of classes at a time
DIRECT_ELEMENTS = 1 << 24


@dataclass
class Collapse:
    """The collapse metrics of the classes analysed, and what the rest of the report reuses."""

    ids: np.ndarray  # label ids of the classes analysed (with at least min_class_count samples)
    n: np.ndarray  # their counts
    mean_norms: np.ndarray  # norms of their centred means
    variances: np.ndarray  # per-class mean squared distance to the class mean
    metrics: dict = field(default_factory=dict)
    pairs: dict[str, PairSummary] = field(default_factory=dict)
    mean_cosine: np.ndarray | None = None
    plan: workplan.WorkPlan | None = None  # which classes the pair sweeps and pass 2's NCC cover

    @property
    def pair_ids(self) -> np.ndarray:
        return self.ids if self.plan is None else self.plan.pair_ids


def collapse_metrics(stats: ClassStats, W=None, *, b=None, source=None, min_count: int = 1,
                     keep_matrix: bool = True, plan: workplan.WorkPlan | None = None) -> Collapse:
    """nc1, nc1_cdnv, the NC2 measures of the means (and of W's rows), nc3 and the literature's other collapse
    measures (:mod:`nc_probe.metrics.literature`), from pass 1's statistics.

    The pair-based ones come from tiled sweeps over the Gram matrices (:mod:`nc_probe.metrics.pairs`) of the classes
    ``plan`` gives them (all, or the most frequent of many: :mod:`nc_probe.stats.workplan`); ``keep_matrix`` also keeps
    the C x C cosines of the means. ``W`` (V x d, any float dtype) is read a block of rows at a time.
    """
    ids, n, means, variances = _analysed(stats, min_count, source)
    K, d = means.shape
    plan = plan if plan is not None else workplan.plan(ids, n, d)
    scatter = stats.scatter.cpu().numpy()
    N = int(n.sum())
    mu_G = means.mean(0)
    if K * d <= DIRECT_ELEMENTS:
        linear, norms = _direct_metrics(means, mu_G, n, scatter, N, W, b, ids, plan.pairs_exact)
    else:
        linear, norms = blockwise.many_class_metrics(means, mu_G, n, scatter, N, W, b, ids)
    exact = plan.pairs_exact
    pos = None if exact else np.searchsorted(ids, plan.pair_ids)
    mp = collapse.mean_pair_metrics(collapse.centered_means(means) if pos is None else (means[pos] - mu_G).T,
                                    variances if pos is None else variances[pos],
                                    keep_matrix=keep_matrix and exact, num_classes=K)
    metrics: dict[str, float | None] = {"nc1": linear["nc1"], "nc1_cdnv": mp.metrics["nc1_cdnv"]}
    metrics.update(_nc2(mp.metrics, linear, "M", exact))
    if W is not None:
        rows = blockwise.classifier_rows(W, plan.pair_ids)
        metrics.update(_nc2(collapse.row_pair_metrics(rows, num_classes=K).metrics, linear, "W", exact))
    else:
        metrics.update({f"nc2_{k}_W": None for k in NC2_KINDS})
    metrics["nc3"] = linear["nc3"]
    more = {k: linear[k] for k in literature.LITERATURE_KEYS if k in linear}
    more |= {k: mp.metrics[k] for k in ("gnc2_log_mean", "gnc2_log_var")}  # from the NC2 sweep
    ordered = {k: metrics[k] for k in ("nc1", "nc1_cdnv", *(f"nc2_{k}_M" for k in NC2_KINDS),
                                       *(f"nc2_{k}_W" for k in NC2_KINDS), "nc3")}
    ordered |= {k: more[k] for k in literature.LITERATURE_KEYS}
    pairs = {"mean_cosine": mp.cosine, "cdnv": mp.cdnv} if mp.cdnv is not None else {}
    return Collapse(ids, n, norms, variances, ordered, pairs, mp.cosine_matrix, plan)


def _analysed(stats: ClassStats, min_count: int, source) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, counts, raw means, variances)`` of the classes with at least ``min_count`` samples (the means a view of
    the statistics when every class seen is analysed)."""
    count = stats.class_count.cpu().numpy()
    sel = np.flatnonzero(count >= max(min_count, 1))
    if len(sel) < 2:
        raise InputError(f"only {len(sel)} class has samples; the metrics compare classes", path=source,
                         fix="pass features of at least 2 classes")
    raw = stats.class_mean.cpu().numpy()
    means = raw if len(sel) == len(raw) else raw[sel]
    n = count[sel]
    return stats.class_ids[sel], n, means, stats.class_m2.cpu().numpy()[sel] / n


def _direct_metrics(means, mu_G, n, scatter, N: int, W, b, ids, pairs_exact: bool) -> tuple[dict, np.ndarray]:
    """The measures that are not pair sweeps, from the centred means and W's rows held whole."""
    M = collapse.centered_means(means)
    out: dict = {"nc1": collapse.nc1(scatter, N, M)}
    out |= literature.literature_metrics(M, scatter, N, n, W, b, mu_G, ids)
    Wp = None if W is None else blockwise.classifier_rows(W, ids)
    out["nc3"] = None if Wp is None else collapse.nc3(Wp, M)
    if not pairs_exact:  # the sweeps cover some classes: equinorm, equiangle and etf of every class from moments
        for key, V in (("M", M.T), ("W", Wp)):
            if V is not None:
                rm = blockwise.RowMoments(V.shape[1], len(V))
                rm.add(0, V)
                out |= {f"{k}_{key}": v for k, v in rm.metrics().items()}
    return out, np.linalg.norm(M, axis=0)


def _nc2(swept: dict, linear: dict, key: str, exact: bool) -> dict:
    """The NC2 measures of the means (``key`` "M") or W's rows ("W"): all from the sweep when it covered every class,
    else maxangle from the sweep (the most frequent classes' pairs) and the others from every class's moments."""
    return {f"nc2_{k}_{key}": swept[f"nc2_{k}" if key == "W" else f"nc2_{k}_M"]
            if exact or k == "maxangle" else linear[f"nc2_{k}_{key}"] for k in NC2_KINDS}


def class_moments(stats: ClassStats, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(counts, means, within-class scatter)`` of the classes ``ids`` (sorted) as float64 numpy arrays (a K x d
    copy of the means)."""
    pos = np.searchsorted(stats.class_ids, ids)
    return (stats.class_count.cpu().numpy()[pos].astype(np.float64), stats.class_mean.cpu().numpy()[pos],
            stats.scatter.cpu().numpy())


def total_metrics(stats: ClassStats, ids: np.ndarray, rank_tol: float, total: TotalCovariance | None = None) -> dict:
    """``rank_numerical_total`` (numerical rank of the total covariance of the features: a layer's rank, as the
    tunnel-effect papers measure it) and the label-free measures. ``acc_linear_probe`` is added by pass 2 only when
    asked: an absent key, not a ``None``, so reports without it compare and gate exactly as before. ``total``: the
    total covariance (:func:`nc_probe.analysis.pca.total_covariance`), when computed already; its one
    eigendecomposition serves both."""
    total = total if total is not None else total_covariance(stats, ids)
    lam = total.spectrum()[0].cpu()
    return {"rank_numerical_total": subspace.numerical_rank(lam.numpy(), rank_tol),
            **label_free_metrics(stats, ids, total)}


def label_free_metrics(stats: ClassStats, ids: np.ndarray, total: TotalCovariance | None = None) -> dict:
    """``rankme``, ``alpha_req`` and ``rank_effective_total`` of the rows of classes ``ids`` (their total statistics,
    no rows: ``N Sigma_T`` is the total scatter about the rows' own mean), and ``lidar`` as None (it needs views of a
    source sample, :mod:`nc_probe.training.metric`). Cost: the uncentred Gram's eigenvalues for rankme; the
    covariance's are ``total``'s."""
    total = total if total is not None else total_covariance(stats, ids)
    n = int(stats.class_count[np.searchsorted(stats.class_ids, ids)].sum())
    if n == 0:
        return {"rankme": None, "alpha_req": None, "rank_effective_total": None, "lidar": None}
    found = label_free.label_free_from_moments(n, total.center.cpu(), total.sigma.cpu() * n,
                                               scatter_eigenvalues=total.spectrum()[0].cpu() * n)
    return {**{k: (None if v != v else v) for k, v in found.items()}, "lidar": None}  # NaN (one row): no value


def prediction_metrics(tally: PredictionTally | None, n_total: int) -> dict:
    """nc4, acc_model and acc_ncc from pass 2's tally (absent without one, or without a classifier). When the
    nearest class mean scored the rows of some classes only (:mod:`nc_probe.stats.workplan`), acc_ncc and nc4 are over
    those rows."""
    if tally is None:
        return {"nc4": None, "acc_model": None, "acc_ncc": None}
    model = tally.has_model
    scored = int(tally.ncc_n.sum()) if tally.ncc_subset else n_total
    return {"nc4": tally.disagree.sum().item() / scored if model and scored else None,
            "acc_model": tally.model_correct.sum().item() / n_total if model else None,
            "acc_ncc": tally.ncc_correct.sum().item() / scored if scored else None}


# ------------------------------------------------------------------------------------------------ the report
def per_class_table(stats: ClassStats, c: Collapse, tally: PredictionTally | None, pca: dict | None,
                    subspace_lists: dict) -> dict:
    """The report's ``per_class`` lists, aligned with the classes analysed (``acc_ncc`` None for classes the
    nearest class mean did not score)."""
    ids, n = c.ids, c.n
    acc_ncc = None
    if tally is not None:
        acc_ncc = (tally.ncc_correct[ids].numpy() / n).tolist()
        if tally.ncc_subset:
            acc_ncc = [a if s else None for a, s in zip(acc_ncc, (tally.ncc_n[ids] > 0).tolist())]
    pos = np.searchsorted(stats.class_ids, ids)
    return {
        "class_ids": ids.tolist(),
        "n": n.tolist(),
        "acc_model": (tally.model_correct[ids].numpy() / n).tolist() if tally and tally.has_model else None,
        "acc_ncc": acc_ncc,
        "within_class_variance": c.variances.tolist(),
        "mean_norm": c.mean_norms.tolist(),
        "mean_cosine": c.mean_cosine,
        "pca2d": pca,
        "zero_features": stats.class_zero_norm.cpu().numpy()[pos].tolist(),
        **subspace_lists,
    }


def pair_summaries(c: Collapse, subspace_pairs: dict, names: list[str], angle_ids: list[int],
                   all_names: dict[int, str]) -> dict:
    """The report's ``pairs``: summaries of every C x C quantity (of the classes the sweeps covered), with the most
    extreme pairs by name."""
    ids = c.pair_ids.tolist()
    if len(ids) != len(c.ids):
        names = [all_names.get(i, str(i)) for i in ids]
    out = {key: s.to_dict(names, ids) for key, s in c.pairs.items()}
    angle_names = [all_names.get(i, str(i)) for i in angle_ids]
    out.update({key: s.to_dict(angle_names, angle_ids) for key, s in subspace_pairs.items()})
    return out


def data_warnings(stats: ClassStats, ids: np.ndarray, min_count: int = 1,
                  count: np.ndarray | None = None) -> tuple[list[str], list[int], list[int]]:
    """Warnings about the data itself (zero vectors, empty and excluded classes, shapes), the empty classes and
    the classes left out for having fewer than ``min_count`` samples. ``count``: samples per class before any was
    left out (default: the counts of ``stats``)."""
    count = stats.count.cpu().numpy() if count is None else count
    zero = int(stats.class_zero_norm.sum())
    warnings = []
    if zero:
        warnings.append(f"{zero} feature vectors are exactly zero; they stay zero after normalization")
    empty = [int(c) for c in np.flatnonzero(count == 0)]
    if empty:
        warnings.append(f"{len(empty)} classes have no samples and are left out: {short_list(empty)}")
    excluded = [int(c) for c in np.flatnonzero((count > 0) & (count < min_count))]
    if excluded:
        warnings.append(f"{len(excluded)} classes have fewer than {{min_class_count={min_count}}} samples and are "
                        f"left out of every metric: {short_list(excluded)}")
    return warnings + shape_warnings(count, ids, stats.dim), empty, excluded


def shape_warnings(count: np.ndarray, ids: np.ndarray, d: int) -> list[str]:
    """What the shape of the data makes impossible to read: no simplex ETF in d < C-1 dimensions, one-sample
    classes, classes too small for d x d subspace estimates, too few samples for d
    (:mod:`nc_probe.analysis.sample_size`)."""
    C = len(ids)
    out = sample_size_warnings(int(count[ids].sum()) if C else 0, C, d)
    if d < C - 1:
        out.append(f"d={d} < C-1={C - 1}: no simplex ETF fits in {d} dimensions, so the nc2 ETF measures cannot "
                   "reach 0 and angles between class means cannot all be equal")
    single = [int(c) for c in ids if count[c] == 1]
    if single:
        out.append(f"{len(single)} classes have a single sample: their within-class scatter is 0 and their rank 1 "
                   f"by construction, not by collapse: {short_list(single)}")
    small = [int(c) for c in ids if 1 < count[c] < 5 * d]
    if small:
        out.append(f"{len(small)} classes have fewer than 5*d={5 * d} samples, so their subspace estimates are "
                   f"rank-limited: {short_list(small)}")
    return out


def short_list(items: list, limit: int = 10) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def subspace_part(stats: ClassStats, count: np.ndarray, settings: MetricSettings):
    """The subspace metrics of statistics whose classes were all tracked in pass 1 (the streaming path)."""
    splan = subspace_report.plan(count, stats.dim, settings)
    tracked = set(stats.subspace_classes)
    classes = [c for c in splan.classes if c in tracked]
    results = subspace_report.results_for(splan, settings)
    results.add_group(subspace_report.pass1_accumulator(stats, classes), settings, set(splan.angle_classes))
    return subspace_report.finish(stats, count, splan, results, settings)


def report_from_stats(stats: ClassStats, *, W=None, b=None, tally: PredictionTally | None = None,
                      class_names=None, settings: MetricSettings | None = None, synced: bool = False,
                      **shortcuts) -> Report:
    """A Report of statistics accumulated by the caller (see the module docstring): every metric of pass 1 and
    the subspace metrics of the classes ``stats`` tracks; nc4 and the accuracies when ``tally`` is given.
    ``W``: the final classifier (``b`` is the tally's business). Under torchrun the statistics of every rank are
    combined in a copy (``stats`` itself is left as it is); ``synced=True``: they are combined already. The tally is
    the caller's to sync (``tally.sync()``) and must be scored against the combined means."""
    settings = metric_settings(settings, **shortcuts)
    if not synced:  # combine a copy: the caller's statistics stay this rank's, so a second call counts nothing twice
        stats = copy.deepcopy(stats).all_reduce() if distributed.active() else stats
    c = collapse_metrics(stats, W, b=b, keep_matrix=stats.num_classes <= subspace_report.INLINE_MATRIX_CLASSES)
    count = stats.count.cpu().numpy()
    sub, sub_lists, angles, sub_pairs, sub_warnings = subspace_part(stats, count, settings)
    # acc_ncc_mahalanobis and acc_nearest_subspace need rules built from the final statistics and a pass of their
    # own; the caller's tally has none
    metrics = {**c.metrics, **prediction_metrics(tally, int(c.n.sum())), "acc_ncc_mahalanobis": None,
               "acc_nearest_subspace": None,
               **total_metrics(stats, c.ids, settings.rank_tol), **sub}
    warnings, empty, _ = data_warnings(stats, c.ids)
    names = [str(class_names[i]) for i in c.ids] if class_names is not None else [str(i) for i in c.ids]
    inputs = {"source": "<ClassStats>", "num_samples": int(c.n.sum()), "num_classes": len(c.ids),
              "num_labels": stats.num_classes, "dim": stats.dim, "has_classifier": W is not None,
              "class_names": names, "class_ids": c.ids.tolist(), "empty_classes": empty,
              "zero_features": int(stats.class_zero_norm.sum()), "nc_probe_version": __version__}
    all_names = dict(zip(c.ids.tolist(), names))
    if c.plan is not None:  # the caller's tally scored every row against every mean
        c.plan = dataclasses.replace(c.plan, ncc_ids=c.ids)
    plan_notes = [] if c.plan is None else c.plan.warnings()
    return Report(inputs=inputs, settings=settings_record(settings, stats, plan=c.plan), metrics=metrics,
                  per_class=per_class_table(stats, c, tally, None, sub_lists), angles=angles,
                  pairs=pair_summaries(c, sub_pairs, names, angles["class_ids"], all_names),
                  warnings=plan_notes + sub_warnings + warnings)


def settings_record(settings: MetricSettings, stats: ClassStats, rows: int | None = None,
                    plan: workplan.WorkPlan | None = None) -> dict:
    """The report's ``settings``: what the numbers depend on (``frequent_classes``: how many of the most frequent
    classes the pair sweeps and the nearest class mean covered, None when they covered every class)."""
    return {"eps2": settings.eps2, "rank_tol": settings.rank_tol, "subspace_dim": settings.subspace_dim,
            "memory_budget": settings.memory_budget,
            "subspace_classes": None if settings.classes is None else list(settings.classes), "chunk_rows": rows,
            "device": str(stats.device), "min_class_count": settings.min_class_count,
            "angle_classes": settings.angle_classes, "angle_precision": settings.angle_precision,
            "linear_probe": settings.linear_probe, "nearest_subspace": settings.nearest_subspace,
            "mahalanobis": settings.mahalanobis,
            "frequent_classes": None if plan is None else plan.setting()}
