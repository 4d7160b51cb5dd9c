"""From a FeatureStore to a Report (``docs/metrics.md`` defines every metric).

Pass 1 accumulates :class:`~nc_probe.stats.class_stats.ClassStats`; the collapse metrics come from them
(:mod:`nc_probe.analysis.from_stats`); pass 2 (:mod:`nc_probe.analysis.pass2`) counts NC4 and the accuracies against
the final class means. The subspace metrics (:mod:`nc_probe.analysis.subspace_report`) use d x d moments gathered in
pass 1 when every class fits the memory budget that way (then their spectra come between the passes on the CPU, on
a thread beside pass 2 on a GPU), else per-class statistics gathered in groups: the first during pass 2, each further
one in a pass of its own (:mod:`nc_probe.analysis.row_passes`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from nc_probe._version import __version__
from nc_probe.analysis import from_stats as compute
from nc_probe.analysis import row_passes, subspace_report
from nc_probe.analysis.pass2 import ScreenedRule, second_pass
from nc_probe.analysis.pca import PCASample, total_covariance
from nc_probe.core import distributed
from nc_probe.core.blas_threads import numpy_blas_single_threaded
from nc_probe.core.errors import InputError
from nc_probe.core.progress import step
from nc_probe.core.settings import MetricSettings, metric_settings
from nc_probe.extract.store import FeatureStore, open_store
from nc_probe.metrics import nearest_subspace, probe
from nc_probe.reports.report import Report
from nc_probe.stats import workplan
from nc_probe.stats.class_stats import ClassStats


def auto_chunk_rows(dim: int) -> int:
    """Rows per chunk so that one float64 chunk would be about 256 MiB (the CPU path never makes one: it holds the
    chunk as read, 128 MiB of float32, and works on cache-sized blocks of it). Large, so that each class has many
    rows per chunk for its d x d syrk (at C=100, d=512: ~650 rows instead of ~160, about 1.4x faster), the Chan
    merge (C x d x d) is negligible, and still flat in N. At most 2^20 rows, so that the per-row int64 label and
    order arrays stay small when d is small."""
    return max(256, min(1 << 20, (256 << 20) // (8 * max(dim, 1))))


def analyze_features(features, labels, W=None, b=None, *, logits=None, class_names=None,
                     settings: MetricSettings | None = None, device="cpu", **shortcuts) -> Report:
    """Analyze in-memory features (numpy arrays or torch tensors): ``features`` (N, d), ``labels`` (N,).

    ``W`` (C, d) and ``b`` (C,) are the final linear classifier (NC2-W, NC3, NC4 and acc_model need it; stored
    ``logits`` give acc_model without it). ``settings`` (or its fields as keywords): see :class:`MetricSettings`.
    """
    store = FeatureStore.from_arrays(features, labels, logits=logits, W=W, b=b, class_names=class_names)
    return analyze_store(store, settings, device=device, **shortcuts)


def analyze_file(path, settings: MetricSettings | None = None, *, device="cpu", **shortcuts) -> Report:
    """Analyze a feature file (nc-probe/safetensors, ``.npz`` or ``.pt``); settings as in :func:`analyze_store`. A
    file of features without labels gets the label-free measures (:mod:`nc_probe.analysis.label_free_report`)."""
    try:
        store = open_store(path)
    except InputError:
        from nc_probe.analysis.label_free_report import analyze_unlabelled, unlabelled_arrays

        arrays = unlabelled_arrays(path)  # looked for only when the labelled reader refuses: labelled files pay nothing
        if arrays is None:
            raise
        return analyze_unlabelled(arrays["features"], arrays.get("source"), path=str(path), device=device)
    return analyze_store(store, settings, device=device, **shortcuts)


def analyze_store(store: FeatureStore, settings: MetricSettings | None = None, *, device="cpu",
                  stats: ClassStats | None = None, layer: str | None = None, inputs: dict | None = None,
                  sha256: str | None = None, **shortcuts) -> Report:
    """Compute every metric for ``store``.

    ``settings`` (or its fields as keywords: ``eps2=1.0``): see :class:`~nc_probe.core.settings.MetricSettings`.
    ``device``: where the statistics are accumulated ("cpu", "cuda", ...). ``stats``: statistics already accumulated
    over exactly this store's rows (e.g. during extraction); pass 1 is then skipped when they serve the plan.
    ``layer``, ``inputs``: recorded in the report. ``sha256``: the digest to record (default: the store file's).
    """
    s = metric_settings(settings, **shortcuts)
    if s.subspace_dim is not None and s.subspace_dim > store.dim:
        raise InputError(f"{{subspace_dim}} {s.subspace_dim} is outside 1..d={store.dim}",
                         fix=f"pick k between 1 and {store.dim}")
    if distributed.active() and not store.is_shard:
        store = store.shard(*distributed.row_range(store.num_samples))
    with numpy_blas_single_threaded():  # its spinning threads took the cores torch's kernels need
        run = _Analysis(store, s, device, stats)
        run.execute(sha256)
        return run.report(layer, inputs)


class _Analysis:
    """One analysis of a store: the plan (from the labels, read once), the passes, and the report."""

    def __init__(self, store: FeatureStore, s: MetricSettings, device, stats: ClassStats | None = None):
        self.t_start = time.perf_counter()
        self.store, self.s, self.device = store, s, device
        labels = store.labels()
        self.num_classes = _num_classes(store, labels)
        _check_predictions(store, self.num_classes)
        self.counts = counts = _global_counts(labels, self.num_classes)
        del labels  # N int64: not kept through the passes (memory flat in N)
        self.keep = counts >= s.min_class_count  # classes analysed; the others' rows are left out everywhere
        self.present = np.flatnonzero(self.keep & (counts > 0))  # the rows ClassStats allocates, in class order
        self.plan = workplan.plan(self.present, counts[self.present], store.dim)
        # statistics accumulated during extraction: the plan is built once, around the classes they hold moments of
        self.given = _usable(stats, s, (self.num_classes, store.dim))
        self.splan = subspace_report.plan(counts, store.dim, s,
                                          tracked=None if self.given is None else self.given.subspace_classes)
        self.rows = s.chunk_rows or auto_chunk_rows(store.dim)
        # seconds per phase: the keys without "/" follow one another and add up to the run ("total"); "a/b" is a
        # part of phase a (a rule riding its pass) or work beside it on another thread
        self.timings: dict[str, float] = {"plan": time.perf_counter() - self.t_start}

    def execute(self, sha256: str | None) -> None:
        store, s, splan, timings, stats = self.store, self.s, self.splan, self.timings, self.given
        with ThreadPoolExecutor(1) as pool:
            digest = pool.submit(store.sha256) if sha256 is None else None
            t = time.perf_counter()
            if stats is None:
                stats = ClassStats(self.num_classes, store.dim, subspace_classes=splan.tracked, device=self.device,
                                   backend=s.backend, classes=self.present, total_moments=s.classes != ())
                step("pass 1: class statistics")
                row_passes.pass1(store, stats, self.rows, self.keep, digest)
            stats.all_reduce()  # under torchrun each rank holds its shard's statistics (given or just accumulated)
            self.stats = stats
            timings["pass1_stats"] = time.perf_counter() - t
            t = time.perf_counter()
            self.W = store.W  # as stored (a 256k-way head's float32 W is never copied whole in float64)
            step("collapse metrics")
            self.c = compute.collapse_metrics(stats, self.W, b=store.b, source=store.source,
                                              min_count=s.min_class_count,
                                              keep_matrix=_keep_cosines(len(self.plan.ids), s), plan=self.plan)
            timings["collapse_metrics"] = time.perf_counter() - t
            self._passes(pool)
            t = time.perf_counter()
            self.sha = digest.result() if digest is not None else sha256
            timings["sha256"] = time.perf_counter() - t  # the wait for it: the digest is read on the pool's thread
        timings["total"] = time.perf_counter() - self.t_start

    def _passes(self, pool: ThreadPoolExecutor) -> None:
        """The subspace spectra (before pass 2 on the CPU; on the pool's thread beside it elsewhere) when pass 1
        gathered them, pass 2, else the group passes; then the coding rates and angles."""
        store, s, splan, stats, timings = self.store, self.s, self.splan, self.stats, self.timings
        analysed = self.c.ids  # the classes with samples that min_class_count keeps
        results = subspace_report.results_for(
            splan, s, keep_ns=s.nearest_subspace and set(analysed.tolist()) <= set(splan.classes)
            and nearest_subspace.wanted(len(analysed), stats.dim))
        job = self._pass1_spectra(pool, results) if splan.in_pass1 else None
        first = row_passes.group_feeder(splan, 0, stats)
        self._second_pass(first)
        if not splan.in_pass1 or job is not None:  # else the spectra were taken before pass 2
            t = time.perf_counter()
            step("subspace spectra and angles")
            if job is not None:
                _, timings["subspace_spectra/thread"] = job.result()  # beside pass 2; the wait for it follows
            else:
                row_passes.subspace_groups(store, stats, splan, results, s, self.rows, first)
            timings["subspace_spectra"] = time.perf_counter() - t
        t = time.perf_counter()
        count = np.where(self.keep, stats.count.cpu().numpy(), 0)
        self.subspace = subspace_report.finish(stats, count, splan, results, s)
        timings["subspace_angles"] = time.perf_counter() - t
        t = time.perf_counter()
        self.layer_metrics["acc_nearest_subspace"] = row_passes.nearest_subspace_accuracy(
            store, results, analysed, self.keep, self.rows)
        if results.keep_ns:
            timings["nearest_subspace"] = time.perf_counter() - t

    def _pass1_spectra(self, pool: ThreadPoolExecutor, results):
        """The spectra of the moments pass 1 gathered: now on the CPU (None), else a job beside pass 2."""
        acc = subspace_report.pass1_accumulator(self.stats, self.splan.classes)
        angle_classes = set(self.splan.angle_classes)
        if torch.device(self.device).type != "cpu":
            return pool.submit(row_passes.timed, results.add_group, acc, self.s, angle_classes)
        # not beside pass 2 on the CPU: both use every core and the two thread pools thrash (N=200k, d=512, C=100,
        # 2-core Xeon: spectra 1.2 s then pass 2 0.8 s, against 3.2 s for the two side by side)
        t = time.perf_counter()
        step("subspace spectra")
        results.add_group(acc, self.s, angle_classes)
        self.timings["subspace_spectra"] = time.perf_counter() - t
        return None

    def _second_pass(self, first) -> None:
        """Pass 2 and the rules riding it (PCA sample, a subspace group, the probe, the Mahalanobis rule)."""
        stats, s, timings = self.stats, self.s, self.timings
        t = time.perf_counter()
        step("PCA, probes")
        total = total_covariance(stats, self.c.ids)
        self.pca = PCASample(stats, self.c.ids, self.store, total=total)
        self.layer_metrics, self.probe = _layer_metrics(stats, self.c.ids, self.keep, s, total, self.plan)
        self.mahalanobis = _mahalanobis_tally(stats, self.c.ids, self.keep) if s.mahalanobis else None
        riders = {"pca_sample": self.pca, "subspace_group": first,
                  "linear_probe": None if self.probe is None else ScreenedRule(self.probe),
                  "mahalanobis": None if self.mahalanobis is None else ScreenedRule(self.mahalanobis)}
        clocked = {k: row_passes.Clocked(o) for k, o in riders.items() if o is not None}
        step("pass 2: predictions, NC4")
        self.tally = second_pass(self.store, stats, self.c.ids, self.W, self.rows, keep=self.keep,
                                 observers=list(clocked.values()), ncc_ids=self.plan.ncc_ids)
        if self.probe is not None:
            distributed.sync(self.probe)
            self.layer_metrics["acc_linear_probe"] = self.probe.accuracy
        if self.mahalanobis is not None:
            distributed.sync(self.mahalanobis)
        self.layer_metrics["acc_ncc_mahalanobis"] = None if self.mahalanobis is None else self.mahalanobis.accuracy
        timings["pass2_nc4"] = time.perf_counter() - t
        timings.update({f"pass2_nc4/{k}": o.seconds for k, o in clocked.items()})

    def report(self, layer, inputs) -> Report:
        c, stats, s = self.c, self.stats, self.s
        sub, sub_lists, angles, sub_pairs, sub_warnings = self.subspace
        metrics = {**c.metrics, **compute.prediction_metrics(self.tally, int(c.n.sum())), **self.layer_metrics,
                   **sub}
        data_warnings, empty, excluded = compute.data_warnings(stats, c.ids, s.min_class_count, self.counts)
        data_warnings = self.plan.warnings() + _work_warnings(self.store, self.plan, s) + data_warnings
        report_inputs = _inputs(self.store, stats, c, self.sha, self.num_classes, layer, empty, self.W is not None)
        report_inputs["excluded_classes"] = excluded
        names = report_inputs["class_names"]
        return Report(inputs={**report_inputs, **(inputs or {})}, metrics=metrics,
                      settings=compute.settings_record(s, stats, self.rows, self.plan) | {"device": str(self.device)},
                      per_class=compute.per_class_table(stats, c, self.tally, self.pca.result(), sub_lists),
                      angles=angles, timings=self.timings, warnings=sub_warnings + data_warnings,
                      pairs=compute.pair_summaries(c, sub_pairs, names, angles["class_ids"],
                                                   dict(zip(c.ids.tolist(), names))))


def _layer_metrics(stats: ClassStats, ids: np.ndarray, keep: np.ndarray, s: MetricSettings, total,
                   plan: workplan.WorkPlan) -> tuple[dict, probe.ProbeTally | None]:
    """``rank_numerical_total``, and the linear probe's pass-2 observer when ``linear_probe`` is on (its accuracy
    is filled in after pass 2; None when scoring every row against every class would pass the work plan's limit,
    as the nearest class mean's)."""
    metrics = compute.total_metrics(stats, ids, s.rank_tol, total)
    if not s.linear_probe:
        return metrics, None
    if not plan.ncc_exact:
        return metrics | {"acc_linear_probe": None}, None
    W, b = probe.ridge_probe(*compute.class_moments(stats, ids))
    return metrics, probe.ProbeTally(W, b, ids, None if keep.all() else keep)


def _mahalanobis_tally(stats: ClassStats, ids: np.ndarray, keep: np.ndarray) -> probe.ProbeTally | None:
    """The pass-2 observer of ``acc_ncc_mahalanobis``, when its product is small enough (see
    :data:`~nc_probe.metrics.probe.MAHALANOBIS_MAX_WORK`)."""
    if stats.dim * len(ids) > probe.MAHALANOBIS_MAX_WORK:
        return None
    W, b = probe.mahalanobis_classifier(*compute.class_moments(stats, ids))
    return probe.ProbeTally(W, b, ids, None if keep.all() else keep)


def _global_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Samples per class over every rank (each holds its shard's labels)."""
    counts = torch.from_numpy(np.bincount(labels, minlength=num_classes).astype(np.int64))
    return distributed.all_reduce_(counts).numpy()


def _usable(stats, s: MetricSettings, shape: tuple[int, int]) -> ClassStats | None:
    """Statistics accumulated elsewhere (during extraction), when they serve this analysis: the right shape and no
    class to leave out (their rows are in them). Whatever subspace moments they hold, the plan works with them."""
    if stats is None:
        return None
    if (stats.num_classes, stats.dim) != shape:
        raise ValueError(f"stats of C={stats.num_classes}, d={stats.dim} do not fit the store (C={shape[0]}, "
                         f"d={shape[1]})")
    return None if s.min_class_count > 1 else stats


def _keep_cosines(num_classes: int, s: MetricSettings) -> bool:
    return s.matrices == "always" or (s.matrices == "auto" and num_classes <= subspace_report.KEEP_MATRIX_CLASSES)


def _inputs(store: FeatureStore, stats: ClassStats, c: compute.Collapse, sha, num_classes: int, layer, empty,
            has_classifier: bool) -> dict:
    ids = c.ids
    return {
        "source": store.source,
        "sha256": sha,
        "num_samples": int(c.n.sum()),
        "num_classes": len(ids),
        "num_labels": num_classes,
        "dim": store.dim,
        "layer": layer or store.metadata.get("layer"),
        "has_classifier": has_classifier,
        "has_logits": store.has_logits,
        "class_names": [store.class_names[i] for i in ids] if store.class_names else [str(i) for i in ids],
        "class_ids": ids.tolist(),
        "empty_classes": empty,
        "zero_features": int(stats.class_zero_norm.sum()),
        "metadata": store.metadata,
        "nc_probe_version": __version__,
    }


def _work_warnings(store: FeatureStore, plan: workplan.WorkPlan, s: MetricSettings) -> list[str]:
    """The linear probe left out with the nearest class mean's classes, and a classifier far wider than the
    classes present (a language model's head) scored on every row because the store has neither the model's
    predictions nor its logits."""
    out = []
    if s.linear_probe and not plan.ncc_exact:
        out.append("acc_linear_probe is left out: scoring every row against a probe of every class would cost as "
                   "much as the nearest class mean over every class")
    if store.W is None or store.has_predictions or store.has_logits:
        return out
    work = float(plan.counts.sum()) * len(store.W) * store.dim
    if work > workplan.SCORE_WORK:
        out.append(f"acc_model and nc4 score every row against all {len(store.W):,} rows of W ({work:.2g} "
                   "multiply-adds); store the model's predictions (a predictions column) to skip that")
    return out


#: Without a classifier W, the class count comes from the labels (or the logits' columns, or the metadata's
#: ``num_outputs``), and may skip classes, but not reach far beyond the classes present: at most
#: ``max(2 * present, present + SPARSE_SLACK)`` (a label of 9,999,999 among 3 classes is a mistake that would
#: otherwise cost 10 million classes' statistics).
SPARSE_SLACK = 1024


def _num_classes(store: FeatureStore, labels: np.ndarray) -> int:
    """The class count C: the largest of the labels + 1, W's rows, the logits' columns and the metadata's
    ``num_outputs``, checked against each other (over every torchrun rank: each holds its shard's labels)."""
    top = distributed.all_reduce_max(int(labels.max()) + 1 if len(labels) else 0)  # a shard may be empty
    if store.W is not None and store.W.shape[0] < top:
        raise InputError(f"the classifier W has {store.W.shape[0]} rows but the labels go up to {top - 1}",
                         path=store.source, fix="pass the W of the model that was trained on these labels")
    if store.class_names is not None and len(store.class_names) < top:
        raise InputError(f"{len(store.class_names)} class names but the labels go up to {top - 1}",
                         path=store.source, fix="give one name per class")
    sizes = {"labels": top}
    outputs = store.metadata.get("num_outputs")
    if isinstance(outputs, int) and not isinstance(outputs, bool) and outputs > 0:  # the classifier's width
        sizes["num_outputs"] = outputs
    if store.has_logits:
        sizes["logits"] = store.read("logits", 0, 1).shape[1]
        if sizes["logits"] < top:
            raise InputError(f"logits have {sizes['logits']} columns but the labels go up to {top - 1}",
                             path=store.source, fix="store the logits of all classes")
    if store.W is not None:
        return max(*sizes.values(), store.W.shape[0])
    _check_sparse(store, labels, sizes)
    return max(sizes.values())


def _check_sparse(store: FeatureStore, labels: np.ndarray, sizes: dict) -> None:
    """Without W, no class count far beyond the classes present (see ``SPARSE_SLACK``)."""
    largest = max(sizes, key=lambda k: sizes[k])
    if sizes[largest] <= SPARSE_SLACK:
        return  # cannot be far beyond: no need to count the classes present
    local = len(labels) and (np.count_nonzero(np.bincount(labels)) if labels.max() < (1 << 22)
                             else len(np.unique(labels)))
    # Under torchrun the sum of each shard's count bounds the classes present from above: every rank decides alike.
    present = int(distributed.all_reduce_(torch.tensor([int(local)], dtype=torch.long))[0])
    if sizes[largest] - 1 < max(2 * present, present + SPARSE_SLACK):
        return
    what = {"labels": "the labels go up to {}", "num_outputs": "the metadata's num_outputs is {}",
            "logits": "the logits have {} columns"}[largest].format(sizes[largest] - (largest == "labels"))
    raise InputError(f"{what} but only {present} classes have samples, and there is no classifier W to say how many "
                     "classes there are", path=store.source,
                     fix="relabel the classes 0..K-1, or store the classifier's W (C, d) in the file")


def _check_predictions(store: FeatureStore, num_classes: int) -> None:
    """The stored predictions are classes of this classifier: 0..C-1."""
    if not store.has_predictions or store.num_samples == 0:
        return
    pred = store.read("predictions")
    lo, hi = int(pred.min()), int(pred.max())
    if lo < 0 or hi >= num_classes:
        raise InputError(f"the predictions go from {lo} to {hi} but there are {num_classes} classes", path=store.source,
                         fix="store the model's predicted class index (0..C-1) per row, or leave the predictions out")
