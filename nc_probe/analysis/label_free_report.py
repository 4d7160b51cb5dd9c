"""Reports of features without labels (self-supervised embeddings): the label-free measures only.

``rankme``, ``alpha_req`` and ``rank_effective_total`` come from the rows' count, mean and centred scatter (a
one-class :class:`~nc_probe.stats.class_stats.ClassStats`: the same float64 Chan merges as the class statistics,
torchrun included); ``lidar`` from the statistics of the surrogate classes when each row names its source sample
(``source`` or ``views``: the views of one sample form a class). Cost: two d x d eigendecompositions, three with
views (:mod:`nc_probe.metrics.label_free`).

A feature file without a labels array (``.npz``, ``.pt`` or ``.safetensors``: ``features``/``H``, optionally
``source``/``views``) is read here by ``nc-probe analyze``; its features are read whole (a file is a matrix the
reader holds anyway).
"""

from __future__ import annotations

import numpy as np
import torch

from nc_probe._version import __version__
from nc_probe.core.errors import InputError
from nc_probe.core.feature_checks import ALIASES, MAX_LABEL, SOURCE_NAMES, check_dtypes
from nc_probe.metrics import label_free
from nc_probe.reports.report import Report
from nc_probe.stats.class_stats import ClassStats

LABEL_FREE_KEYS = ("rankme", "alpha_req", "rank_effective_total", "lidar")
#: bound on source ids: the statistics keep rows for the sources seen only, so this is a range check, not a size
MAX_SOURCES = 1 << 62


def row_stats(dim: int, device="cpu") -> ClassStats:
    """Statistics of unlabelled rows: one class (count, mean, centred scatter), no d x d subspace moments per class."""
    return ClassStats(1, dim, subspace_classes=[], device=device)


def source_stats(dim: int, device="cpu") -> ClassStats:
    """Statistics of the surrogate classes (source sample ids) for lidar."""
    return ClassStats(MAX_SOURCES, dim, subspace_classes=[], device=device)


def rows_measures(stats: ClassStats) -> dict:
    """rankme, alpha_req, rank_effective_total of the rows a :func:`row_stats` holds (None without rows; NaN, a
    single row's alpha_req, as None)."""
    n = stats.total
    if n == 0:
        return {k: None for k in LABEL_FREE_KEYS[:3]}
    found = label_free.label_free_from_moments(n, stats.class_mean[0].cpu(), stats.scatter.cpu())
    return {k: (None if v != v else v) for k, v in found.items()}


def lidar_of(sources: ClassStats) -> float | None:
    """LiDAR of surrogate-class statistics: ``Sigma_W = scatter / N``; ``Sigma_B`` the covariance of the source means
    about their unweighted mean (Thilak et al.; each source counts once). None with fewer than 2 sources."""
    count = sources.class_count
    present = torch.nonzero(count > 0).flatten()
    if len(present) < 2:
        return None
    means = sources.class_mean[present].cpu()
    centred = means - means.mean(0)
    sigma_b = centred.T @ centred / len(present)
    sigma_w = sources.scatter.cpu() / int(count.sum())
    return label_free.lidar(sigma_w, sigma_b)


def label_free_report(stats: ClassStats, sources: ClassStats | None = None, *, source: str = "<features>",
                      inputs: dict | None = None) -> Report:
    """The Report of unlabelled rows: the label-free measures (lidar when ``sources`` holds views), no classes."""
    metrics = {**rows_measures(stats), "lidar": None if sources is None else lidar_of(sources)}
    warnings = []
    if sources is None:
        warnings.append("no labels: only the label-free measures (rankme, alpha_req, rank_effective_total); lidar "
                        "needs the source sample of each row (a source or views array)")
    record = {"source": source, "num_samples": stats.total, "num_classes": 0, "num_labels": 0, "dim": stats.dim,
              "has_classifier": False, "class_names": [], "class_ids": [], "empty_classes": [],
              "zero_features": int(stats.class_zero_norm.sum()), "labels": False, "nc_probe_version": __version__}
    if sources is not None:
        record["num_sources"] = int((sources.class_count > 0).sum())
    return Report(inputs={**record, **(inputs or {})}, settings={"device": str(stats.device)}, metrics=metrics,
                  per_class={"class_ids": [], "n": []}, warnings=warnings)


def unlabelled_arrays(path) -> dict | None:
    """The arrays of a ``.npz``/``.pt`` feature file that has features but no labels (``features`` and, when
    present, ``source``), else None: the file is for the labelled reader, which says what is wrong with it."""
    from nc_probe.data.array_files import read_array_file

    names_seen: list[str] = []

    def select(names: list[str]) -> list[str]:
        names_seen.extend(names)
        kinds = {ALIASES.get(n, n if n in SOURCE_NAMES else None) for n in names}
        if "labels" in kinds or "features" not in kinds or None in kinds:
            return []
        return [n for n in names if ALIASES.get(n) == "features" or n in SOURCE_NAMES]

    try:
        if str(path).endswith((".npz", ".pt", ".pth")):
            arrays = read_array_file(path, example="{'features': Z}", select=select)
        else:
            arrays = _safetensors_arrays(str(path), select)
    except InputError:
        return None  # the labelled reader reads it again and says what is wrong
    if not arrays:
        return None
    out = {"features": next(np.asarray(v) for k, v in arrays.items() if ALIASES.get(k) == "features")}
    sources = [k for k in arrays if k in SOURCE_NAMES]
    if len(sources) > 1:
        raise InputError("both a source and a views array given", path=path, fix="keep one source id per row")
    if sources:
        out["source"] = np.asarray(arrays[sources[0]])
    return out


def _safetensors_arrays(path: str, select) -> dict:
    """The selected arrays of a safetensors file (its header checked against the file before anything is read)."""
    from nc_probe.core.safetensors_file import SafetensorsFile

    try:
        st = SafetensorsFile(path)
    except (OSError, ValueError):
        return {}
    out = {}
    for name in select(list(st.tensors)):
        shape = st.shape(name)
        out[name] = st.read_rows(name, 0, shape[0]) if shape else st.read_rows(name, 0, 1).reshape(())
    return out


def _source_ids(source, rows: int, path: str) -> torch.Tensor:
    """Each row's source sample id as int64, checked as the labels are (dtype kind, the same bound) before torch
    sees them: a complex, string or uint64 array is one line, not a traceback."""
    src = np.asarray(source.cpu() if isinstance(source, torch.Tensor) else source)
    check_dtypes({"source": src.dtype}, path)
    fix = "give one non-negative integer source sample id per row"
    if src.shape != (rows,):
        raise InputError(f"source has shape {src.shape} for {rows} rows", path=path, fix=fix)
    if src.size and (int(src.min()) < 0 or int(src.max()) >= MAX_LABEL):
        raise InputError(f"source ids run from {int(src.min())} to {int(src.max())}", path=path, fix=fix)
    return torch.from_numpy(src.astype(np.int64))


def analyze_unlabelled(features, source=None, *, path: str = "<features>", device="cpu",
                       chunk_rows: int = 65536) -> Report:
    """The label-free report of N x d ``features`` (``source``: each row's source sample id, for lidar)."""
    h = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    if h.ndim != 2 or h.shape[1] == 0 or h.is_complex():
        raise InputError(f"features of shape {tuple(h.shape)}: an N x d matrix is needed", path=path,
                         fix="store the features as one (N, d) array")
    if not h.is_floating_point():
        h = h.double()
    if not bool(torch.isfinite(h).all()):
        raise InputError("features contain NaN or inf", path=path, fix="check the model's outputs")
    stats = row_stats(h.shape[1], device)
    sources = None
    if source is not None:
        ids = _source_ids(source, len(h), path)
        sources = source_stats(h.shape[1], device)
    for s in range(0, len(h), chunk_rows):
        stats.update(h[s:s + chunk_rows], torch.zeros(len(h[s:s + chunk_rows]), dtype=torch.long))
        if sources is not None:
            sources.update(h[s:s + chunk_rows], ids[s:s + chunk_rows])
    if stats.total == 0:
        raise InputError("the file holds no feature rows", path=path, fix="write the features again")
    return label_free_report(stats, sources, source=path)
