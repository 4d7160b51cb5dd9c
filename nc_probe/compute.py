"""From ClassStats to metrics: the collapse metrics (pass 1's statistics alone), the subspace metrics (ranks,
coding rates, principal angles), the per-class table and the warnings the data's shape calls for.

This is also the public path for features streamed in a training loop, torchmetrics-style, with no FeatureStore:
``stats.update(h, y)`` per batch, then :func:`report_from_stats`. NC4 and the accuracies need a second pass
against the final means: ``tally = PredictionTally.for_stats(stats, W, b)``, ``tally.update(h, y)`` per batch,
and ``report_from_stats(stats, W=W, b=b, tally=tally)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._version import __version__
from .errors import InputError
from .metrics import collapse, subspace
from .metrics.predictions import PredictionTally
from .report import Report
from .settings import MetricSettings, metric_settings
from .stats import ClassStats

SPECTRUM_KEEP = 64
NC2_KINDS = ("equinorm", "equiangle", "maxangle", "etf")


@dataclass
class Collapse:
    """The collapse metrics of the classes that have samples, and what the rest of the report reuses."""

    ids: np.ndarray  # label ids of the classes with samples
    n: np.ndarray  # their counts
    M: np.ndarray  # centred means, d x C
    variances: np.ndarray  # per-class mean squared distance to the class mean
    metrics: dict = field(default_factory=dict)


def collapse_metrics(stats: ClassStats, W=None, *, source=None) -> Collapse:
    """nc1, nc1_cdnv, the NC2 measures of the means (and of W's rows) and nc3, from pass 1's statistics."""
    count = stats.count.cpu().numpy()
    ids = np.flatnonzero(count)
    if len(ids) < 2:
        raise InputError(f"only {len(ids)} class has samples; the metrics compare classes", path=source,
                         fix="pass features of at least 2 classes")
    n = count[ids]
    M = collapse.centered_means(stats.mean.cpu().numpy()[ids])
    variances = stats.m2.cpu().numpy()[ids] / n
    metrics: dict[str, float | None] = {"nc1": collapse.nc1(stats.scatter.cpu().numpy(), int(n.sum()), M),
               "nc1_cdnv": collapse.nc1_cdnv(M, variances)}
    metrics.update({f"nc2_{k}_M": v for k, v in collapse.nc2(M.T).items()})
    if W is not None:
        W = np.asarray(W, dtype=np.float64)
        metrics.update({f"nc2_{k}_W": v for k, v in collapse.nc2(W[ids]).items()})
        metrics["nc3"] = collapse.nc3(W[ids], M)
    else:
        metrics.update({f"nc2_{k}_W": None for k in NC2_KINDS})
        metrics["nc3"] = None
    return Collapse(ids, n, M, variances, metrics)


def prediction_metrics(tally: PredictionTally | None, n_total: int) -> dict:
    """nc4, acc_model and acc_ncc from pass 2's tally (absent without one, or without a classifier)."""
    if tally is None:
        return {"nc4": None, "acc_model": None, "acc_ncc": None}
    model = tally.has_model
    return {"nc4": tally.disagree.sum().item() / n_total if model else None,
            "acc_model": tally.model_correct.sum().item() / n_total if model else None,
            "acc_ncc": tally.ncc_correct.sum().item() / n_total}


# ------------------------------------------------------------------------------------------------ subspaces
def subspace_metrics(stats: ClassStats, count: np.ndarray,
                     settings: MetricSettings) -> tuple[dict, dict, dict, list[str]]:
    """Ranks, coding rates and principal angles of the tracked classes that have samples:
    ``(scalar metrics, per-class lists, angle matrices, warnings)``."""
    d, N = stats.dim, int(count.sum())
    eps2 = settings.eps2
    out: dict[str, float | None] = {"coding_rate_max": subspace.coding_rate_max(d, eps2)}
    lam_total = np.linalg.eigvalsh(stats.second_moment_total().cpu().numpy() / N)
    out["coding_rate"] = subspace.coding_rate(np.maximum(lam_total, 0), d, eps2)
    tracked = [c for c in stats.subspace_classes if count[c] > 0]
    per, bases = _class_spectra(stats, count, settings)
    warnings = []
    complete = stats.all_tracked or set(tracked) == set(np.flatnonzero(count).tolist())
    if complete and tracked:
        rc = float(np.dot(count[tracked] / N, per["coding_rate_class"]))
        rate = float(out["coding_rate"])  # type: ignore[arg-type]  # set above
        out["coding_rate_within"], out["rate_reduction"] = rc, rate - rc
    else:
        out["coding_rate_within"] = out["rate_reduction"] = None
        if tracked:
            warnings.append("coding_rate_within and rate_reduction need every class; they are left out because "
                            "subspace statistics were kept for only some classes")
    angle_metrics, angles, angle_warnings = _angles(bases, tracked, np.array(per["basis_dim"]), d)
    out.update(angle_metrics)
    return out, {"subspace_class_ids": tracked, **per}, angles, warnings + angle_warnings


def _class_spectra(stats: ClassStats, count: np.ndarray, settings: MetricSettings) -> tuple[dict, list]:
    """Per tracked class with samples: ranks, coding rate, basis size and leading spectrum; and its basis."""
    d = stats.dim
    per: dict[str, list] = {k: [] for k in ("rank_energy95", "rank_energy99", "rank_effective", "rank_numerical",
                                             "coding_rate_class", "basis_dim", "spectrum")}
    zz = stats.zz.cpu().numpy()

    def decompose(item):  # one eigh per class, on parallel_map threads; only the k basis vectors are kept
        slot, c = item
        lam, vec = subspace.spectrum(zz[slot] / count[c])
        r95 = subspace.energy_rank(lam, 0.95)
        return lam, r95, np.ascontiguousarray(vec[:, : settings.subspace_dim or max(r95, 1)])

    items = [(slot, c) for slot, c in enumerate(stats.subspace_classes) if count[c] > 0]
    bases = []
    for lam, r95, basis in subspace.parallel_map(decompose, items):
        per["rank_energy95"].append(r95)
        per["rank_energy99"].append(subspace.energy_rank(lam, 0.99))
        per["rank_effective"].append(subspace.effective_rank(lam))
        per["rank_numerical"].append(subspace.numerical_rank(lam, settings.rank_tol))
        per["coding_rate_class"].append(subspace.coding_rate(lam, d, settings.eps2))
        per["basis_dim"].append(basis.shape[1])
        top = lam[:SPECTRUM_KEEP]
        per["spectrum"].append((top / lam.sum() if lam.sum() > 0 else top).tolist())
        bases.append(basis)
    return per, bases


def _angles(bases: list, tracked: list, k: np.ndarray, d: int) -> tuple[dict, dict, list[str]]:
    if len(bases) < 2:
        return ({"angle_min_mean": None, "angle_min_min": None},
                {"class_ids": tracked, "angle_min": None, "subspace_affinity": None}, [])
    angle, affinity = subspace.angle_matrices(bases)
    iu = np.triu_indices(len(bases), 1)
    forced = int(np.count_nonzero((k[:, None] + k[None, :])[iu] > d))
    warnings = []
    if forced:
        warnings.append(f"{forced} of {len(iu[0])} class pairs have bases of k_c + k_c' > d={d} dimensions, so "
                        "their smallest principal angle is 0 by dimension count, not by measurement (each class's "
                        "k is per_class basis_dim); read subspace_affinity for those pairs, or fix k with "
                        "{subspace_dim}")
    return ({"angle_min_mean": float(angle[iu].mean()), "angle_min_min": float(angle[iu].min())},
            {"class_ids": tracked, "angle_min": angle.tolist(), "subspace_affinity": affinity.tolist(),
             "forced_zero_pairs": forced}, warnings)


# ------------------------------------------------------------------------------------------------ the report
def per_class_table(stats: ClassStats, c: Collapse, tally: PredictionTally | None, pca: dict | None,
                    subspace_lists: dict) -> dict:
    """The report's ``per_class`` lists, aligned with the classes that have samples."""
    ids, n = c.ids, c.n
    return {
        "class_ids": ids.tolist(),
        "n": n.tolist(),
        "acc_model": (tally.model_correct[ids].numpy() / n).tolist() if tally and tally.has_model else None,
        "acc_ncc": (tally.ncc_correct[ids].numpy() / n).tolist() if tally else None,
        "within_class_variance": c.variances.tolist(),
        "mean_norm": np.linalg.norm(c.M, axis=0).tolist(),
        "mean_cosine": mean_cosine(c.M).tolist(),
        "pca2d": pca,
        "zero_features": stats.zero_norm.cpu().numpy()[ids].tolist(),
        **subspace_lists,
    }


def data_warnings(stats: ClassStats, ids: np.ndarray) -> tuple[list[str], list[int]]:
    """Warnings about the data itself (zero vectors, empty classes, shapes), and the empty classes."""
    count = stats.count.cpu().numpy()
    zero = int(stats.zero_norm.sum())
    warnings = []
    if zero:
        warnings.append(f"{zero} feature vectors are exactly zero; they stay zero after normalization")
    empty = [int(c) for c in np.flatnonzero(count == 0)]
    if empty:
        warnings.append(f"{len(empty)} classes have no samples and are left out: {short_list(empty)}")
    return warnings + shape_warnings(count, ids, stats.dim), empty


def mean_cosine(M: np.ndarray) -> np.ndarray:
    """C x C cosines of the centered class means (columns of ``M``); the simplex ETF has -1/(C-1) off the diagonal."""
    norms = np.linalg.norm(M, axis=0)
    unit = M / np.where(norms > 0, norms, 1)
    return unit.T @ unit


def shape_warnings(count: np.ndarray, ids: np.ndarray, d: int) -> list[str]:
    """What the shape of the data makes impossible to read: no simplex ETF in d < C-1 dimensions, one-sample
    classes, classes too small for d x d subspace estimates."""
    out = []
    C = len(ids)
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


def report_from_stats(stats: ClassStats, *, W=None, b=None, tally: PredictionTally | None = None,
                      class_names=None, settings: MetricSettings | None = None, **shortcuts) -> Report:
    """A Report of statistics accumulated by the caller (see the module docstring): every metric of pass 1 and
    the subspace metrics; nc4 and the accuracies when ``tally`` is given. ``W``/``b``: the final classifier."""
    settings = metric_settings(settings, **shortcuts)
    stats.all_reduce()
    c = collapse_metrics(stats, W)
    count = stats.count.cpu().numpy()
    sub, sub_lists, angles, sub_warnings = subspace_metrics(stats, count, settings)
    metrics = {**c.metrics, **prediction_metrics(tally, int(c.n.sum())), **sub}
    warnings, empty = data_warnings(stats, c.ids)
    names = [str(class_names[i]) for i in c.ids] if class_names is not None else [str(i) for i in c.ids]
    inputs = {"source": "<ClassStats>", "num_samples": int(c.n.sum()), "num_classes": len(c.ids),
              "num_labels": stats.num_classes, "dim": stats.dim, "has_classifier": W is not None,
              "class_names": names, "class_ids": c.ids.tolist(), "empty_classes": empty,
              "zero_features": int(stats.zero_norm.sum()), "nc_probe_version": __version__}
    return Report(inputs=inputs, settings=settings_record(settings, stats), metrics=metrics,
                  per_class=per_class_table(stats, c, tally, None, sub_lists), angles=angles,
                  warnings=sub_warnings + warnings)


def settings_record(settings: MetricSettings, stats: ClassStats, rows: int | None = None) -> dict:
    """The report's ``settings``: what the numbers depend on."""
    return {"eps2": settings.eps2, "rank_tol": settings.rank_tol, "subspace_dim": settings.subspace_dim,
            "memory_budget": settings.memory_budget,
            "subspace_classes": None if stats.all_tracked else list(stats.subspace_classes), "chunk_rows": rows,
            "device": str(stats.device)}
