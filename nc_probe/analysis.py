"""From a FeatureStore to a Report: pass 1 accumulates ClassStats, the metrics are computed from them, pass 2
counts NC4 and the accuracies against the final class means (``docs/metrics.md``).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from . import distributed
from ._version import __version__
from . import stats as stats_module
from .errors import InputError
from .metrics import collapse, subspace
from .metrics.predictions import PredictionTally, Predictor, logits_argmax
from .report import Report
from .stats import GiB, ClassStats, check_memory
from .store import FeatureStore, open_store

SPECTRUM_KEEP = 64
PASS2_BLOCK = 4096  # CPU pass 2: rows cast to float64 and scored at a time (a cache-sized block)
PASS2_READ_ROWS = 16384  # CPU pass 2: rows per read
PCA_POINTS = 2000  # rows of the deterministic subsample whose 2-D PCA projection the report keeps (for plots)


def auto_chunk_rows(dim: int) -> int:
    """Rows per chunk so that one float64 chunk would be about 256 MiB (the CPU path never makes one: it holds the
    chunk as read, 128 MiB of float32, and works on cache-sized blocks of it). Large, so that each class has many
    rows per chunk for its d x d syrk (at C=100, d=512: ~650 rows instead of ~160, about 1.4x faster), the Chan
    merge (C x d x d) is negligible, and still flat in N. At most 2^20 rows, so that the per-row int64 label and
    order arrays stay small when d is small."""
    return max(256, min(1 << 20, (256 << 20) // (8 * max(dim, 1))))


def analyze_features(features, labels, W=None, b=None, *, logits=None, class_names=None, **settings) -> Report:
    """Analyze in-memory features (numpy arrays or torch tensors): ``features`` (N, d), ``labels`` (N,).

    ``W`` (C, d) and ``b`` (C,) are the final linear classifier (NC2-W, NC3, NC4 and acc_model need it; stored
    ``logits`` give acc_model without it). Settings as in :func:`analyze_store`.
    """
    store = FeatureStore.from_arrays(features, labels, logits=logits, W=W, b=b, class_names=class_names)
    return analyze_store(store, **settings)


def analyze_file(path, **settings) -> Report:
    """Analyze a feature file (nc-probe/safetensors, ``.npz`` or ``.pt``); settings as in :func:`analyze_store`."""
    return analyze_store(open_store(path), **settings)


def analyze_store(store: FeatureStore, *, eps2: float = 0.5, rank_tol: float = 1e-6, subspace_dim: int | None = None,
                  classes=None, memory_budget: int = 2 * GiB, chunk_rows: int | None = None, device="cpu",
                  layer: str | None = None, inputs: dict | None = None, stats: ClassStats | None = None) -> Report:
    """Compute every metric of the spec for ``store``.

    Parameters
    ----------
    eps2: MCR^2 distortion eps^2 (default 0.5).
    rank_tol: relative eigenvalue threshold of ``rank_numerical``.
    subspace_dim: fix the principal-angle basis size k of every class (default: its ``rank_energy95``).
    classes: class ids whose subspace metrics are computed (default: all, if they fit in ``memory_budget`` bytes).
    chunk_rows: rows per read; results do not depend on it beyond float rounding.
    device: where the statistics are accumulated ("cpu", "cuda", ...).
    stats: statistics already accumulated over exactly this store's rows (e.g. during extraction); pass 1 is then
        skipped and the statistics are used as they are (their tracked classes decide the subspace metrics).
    """
    _check_settings(eps2, rank_tol, subspace_dim, store)
    timings = {}
    t_start = t = time.perf_counter()
    if distributed.active() and not store.is_shard:
        store = store.shard(*distributed.row_range(store.num_samples))
    labels = store.labels()
    num_classes = distributed.all_reduce_max(_num_classes(store, labels))
    del labels  # N int64: not kept through the passes (memory flat in N)
    rows = chunk_rows or auto_chunk_rows(store.dim)
    budget_warning = None
    if stats is None:
        tracked, budget_warning = check_memory(num_classes, store.dim, classes, memory_budget)
        stats = ClassStats(num_classes, store.dim, subspace_classes=tracked, device=device)
    elif (stats.num_classes, stats.dim) != (num_classes, store.dim):
        raise ValueError(f"stats of C={stats.num_classes}, d={stats.dim} do not fit the store (C={num_classes}, "
                         f"d={store.dim})")
    else:
        tracked = None if stats.all_tracked else stats.subspace_classes
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(store.sha256)
        if stats.total == 0:
            for chunk in store.iter_chunks(rows, reuse=True):
                stats.update(torch.from_numpy(np.asarray(chunk.features)), torch.from_numpy(chunk.labels))
                del chunk  # before the next read: one chunk in memory at a time
        stats.all_reduce()  # under torchrun each rank holds its shard's statistics (given or just accumulated)
        timings["pass1_stats"] = time.perf_counter() - t

        t = time.perf_counter()
        count = stats.count.cpu().numpy()
        ids = np.flatnonzero(count)
        if len(ids) < 2:
            raise InputError(f"only {len(ids)} class has samples; the metrics compare classes", path=store.source,
                             fix="pass features of at least 2 classes")
        means = stats.mean.cpu().numpy()[ids]
        M = collapse.centered_means(means)
        n = count[ids]
        variances = stats.m2.cpu().numpy()[ids] / n
        W = None if store.W is None else np.asarray(store.W, dtype=np.float64)
        metrics = {"nc1": collapse.nc1(stats.scatter.cpu().numpy(), int(n.sum()), M),
                   "nc1_cdnv": collapse.nc1_cdnv(M, variances)}
        metrics.update({f"nc2_{k}_M": v for k, v in collapse.nc2(M.T).items()})
        if W is not None:
            metrics.update({f"nc2_{k}_W": v for k, v in collapse.nc2(W[ids]).items()})
            metrics["nc3"] = collapse.nc3(W[ids], M)
        else:
            metrics.update({f"nc2_{k}_W": None for k in ("equinorm", "equiangle", "maxangle", "etf")})
            metrics["nc3"] = None
        timings["collapse_metrics"] = time.perf_counter() - t

        # The subspace metrics need only pass 1's statistics: they run on the pool's thread (after the hash) while
        # pass 2 reads the features again. Each stage's timing is its own; they overlap.
        subspace_job = pool.submit(_timed, _subspace_metrics, stats, count, eps2, rank_tol, subspace_dim)
        t = time.perf_counter()
        pca = _PCASample(stats, ids, store.num_samples)
        tally = _second_pass(store, stats, ids, W, rows, pca)
        timings["pass2_nc4"] = time.perf_counter() - t
        metrics["nc4"] = tally.disagree.sum().item() / n.sum() if tally.has_model else None
        metrics["acc_model"] = tally.model_correct.sum().item() / n.sum() if tally.has_model else None
        metrics["acc_ncc"] = tally.ncc_correct.sum().item() / n.sum()

        (sub_metrics, sub_class, angles, sub_warnings), timings["subspace_metrics"] = subspace_job.result()
        metrics.update(sub_metrics)
        sha = digest.result()
    timings["total"] = time.perf_counter() - t_start

    warnings = [w for w in [budget_warning] if w] + sub_warnings
    zero = stats.zero_norm.cpu().numpy()
    if zero.sum():
        warnings.append(f"{int(zero.sum())} feature vectors are exactly zero; they stay zero after normalization")
    empty = [int(c) for c in np.flatnonzero(count == 0)]
    if empty:
        warnings.append(f"{len(empty)} classes have no samples and are left out: {_short(empty)}")
    warnings += _shape_warnings(count, ids, store.dim)
    per_class = {
        "class_ids": ids.tolist(),
        "n": n.tolist(),
        "acc_model": (tally.model_correct[ids].numpy() / n).tolist() if tally.has_model else None,
        "acc_ncc": (tally.ncc_correct[ids].numpy() / n).tolist(),
        "within_class_variance": variances.tolist(),
        "mean_norm": np.linalg.norm(M, axis=0).tolist(),
        "mean_cosine": _mean_cosine(M).tolist(),
        "pca2d": pca.result(),
        "zero_features": zero[ids].tolist(),
        **sub_class,
    }
    report_inputs = {
        "source": store.source,
        "sha256": sha,
        "num_samples": int(n.sum()),
        "num_classes": len(ids),
        "num_labels": num_classes,
        "dim": store.dim,
        "layer": layer or store.metadata.get("layer"),
        "has_classifier": W is not None,
        "has_logits": store.has_logits,
        "class_names": [store.class_names[i] for i in ids] if store.class_names else [str(i) for i in ids],
        "class_ids": ids.tolist(),
        "empty_classes": empty,
        "zero_features": int(zero.sum()),
        "metadata": store.metadata,
        "nc_probe_version": __version__,
        **(inputs or {}),
    }
    settings = {"eps2": eps2, "rank_tol": rank_tol, "subspace_dim": subspace_dim, "memory_budget": memory_budget,
                "subspace_classes": None if tracked is None else list(tracked), "chunk_rows": rows,
                "device": str(device)}
    return Report(inputs=report_inputs, settings=settings, metrics=metrics, per_class=per_class, angles=angles,
                  timings=timings, warnings=warnings)


def _timed(fn, *args):
    t = time.perf_counter()
    return fn(*args), time.perf_counter() - t


def _check_settings(eps2, rank_tol, subspace_dim, store):
    if not eps2 > 0:
        raise InputError(f"--eps2 must be positive, got {eps2}", fix="use e.g. --eps2 0.5")
    if not 0 < rank_tol < 1:
        raise InputError(f"--rank-tol must lie in (0, 1), got {rank_tol}", fix="use e.g. --rank-tol 1e-6")
    if subspace_dim is not None and not 1 <= subspace_dim <= store.dim:
        raise InputError(f"--subspace-dim {subspace_dim} is outside 1..d={store.dim}",
                         fix=f"pick k between 1 and {store.dim}")


def _num_classes(store: FeatureStore, labels: np.ndarray) -> int:
    top = int(labels.max()) + 1 if len(labels) else 0  # a torchrun shard may be empty
    if store.W is not None and store.W.shape[0] < top:
        raise InputError(f"the classifier W has {store.W.shape[0]} rows but the labels go up to {top - 1}",
                         path=store.source, fix="pass the W of the model that was trained on these labels")
    if store.class_names is not None and len(store.class_names) < top:
        raise InputError(f"{len(store.class_names)} class names but the labels go up to {top - 1}",
                         path=store.source, fix="give one name per class")
    sizes = [top] + ([store.W.shape[0]] if store.W is not None else [])
    if store.has_logits:
        sizes.append(store.read("logits", 0, 1).shape[1])
        if sizes[-1] < top:
            raise InputError(f"logits have {sizes[-1]} columns but the labels go up to {top - 1}",
                             path=store.source, fix="store the logits of all classes")
    return max(sizes)


def _second_pass(store, stats, ids, W, rows, pca=None) -> PredictionTally:
    dev = stats.device
    if dev.type == "cpu" and stats_module.HOST_PATH:
        return _second_pass_host(store, stats, ids, W, rows, pca)
    predictor = _predictor(store, stats, ids, W)
    tally = PredictionTally(stats.num_classes)
    for start in range(0, store.num_samples, rows):
        stop = min(start + rows, store.num_samples)
        h = torch.from_numpy(np.asarray(store.read("features", start, stop))).to(dev, torch.float64)
        logits = store.read("logits", start, stop) if store.has_logits and W is None else None
        y = torch.from_numpy(store.labels_chunk(start, stop))
        tally.add(y, *predictor.predict(h, logits))
        if pca is not None:
            pca.add(start, h, y)
    return tally.all_reduce()


def _predictor(store, stats, ids, W) -> Predictor:
    dev = stats.device
    sel = torch.as_tensor(ids, device=dev)
    to = dict(dtype=torch.float64, device=dev)
    return Predictor(stats.mean[sel], sel, None if W is None else torch.as_tensor(W, **to),
                     None if store.b is None else torch.as_tensor(store.b, **to))


def _second_pass_host(store, stats, ids, W, rows, pca=None) -> PredictionTally:
    """:func:`_second_pass` on the CPU, with the same float64 decisions as :class:`Predictor`, ``PASS2_BLOCK`` rows
    at a time.

    Float32 features are first scored in float32 (about twice the speed), with a rigorous bound on the rounding
    (``_Float32Screen``); a row whose best class does not win by more than that bound (near-ties, exact ties) is
    scored again in float64 exactly as before, so every decision is the float64 one.
    """
    predictor = _predictor(store, stats, ids, W)
    exact = predictor.positions
    screen = _Float32Screen(predictor.cols, predictor.sq, predictor.K, predictor.b)
    tally = PredictionTally(stats.num_classes)
    buf = torch.empty(min(PASS2_BLOCK, store.num_samples), store.dim, dtype=torch.float64)
    rows = min(rows, PASS2_READ_ROWS)  # pass 2 needs no large chunks: less memory beside the subspace metrics
    read_buf = store.read_buffer("features", rows)

    for start in range(0, store.num_samples, rows):
        stop = min(start + rows, store.num_samples)
        feats = torch.from_numpy(np.asarray(store.read("features", start, stop, out=read_buf)))
        labels = torch.from_numpy(store.labels_chunk(start, stop))
        logits = store.read("logits", start, stop) if store.has_logits and W is None else None
        for s in range(0, stop - start, PASS2_BLOCK):
            e = min(s + PASS2_BLOCK, stop - start)
            block = feats[s:e]
            h = None
            screened = screen(block) if block.dtype == torch.float32 else None
            if screened is None:
                h = buf[: e - s]
                h.copy_(block)
                ncc, model = exact(h)
            else:
                ncc, model, unsure = screened
                if len(unsure):
                    ncc[unsure], again = exact(block[unsure].to(torch.float64))
                    if model is not None:
                        model[unsure] = again
            ncc = predictor.ids[ncc]
            if W is None:
                model = logits_argmax(None if logits is None else logits[s:e])
            y = labels[s:e]
            tally.add(y, ncc, model)
            if pca is not None:
                pca.add(start + s, block if h is None else h, y)  # float32 rows promote exactly
        del feats, labels, logits, block  # before the next read: one chunk in memory at a time
    return tally.all_reduce()


class _Float32Screen:
    """Nearest class center and classifier argmax of float32 rows, computed in float32 with an error bound.

    For a float32 row ``h`` and a float64 column ``c`` (a class mean or a classifier row), the float32 product of
    ``h`` with ``c`` rounded to float32 differs from the exact ``h . c`` by at most ``(d+2) u / (1 - (d+2) u)
    ||h|| ||c||`` (u = 2^-24; the rounding of ``c`` plus a dot product of d terms, in any summation order, with or
    without FMA; Higham, Accuracy and Stability, 3.1) plus ``(d + sqrt(d) ||h||) 2^-149`` for underflow (rows whose
    float32 norm is below 1e-15 are not screened). The float64 score of the
    original computation is within ``(d+2) 2^-53 ||h|| ||c||`` of the exact one, and the final float64 subtraction
    or addition within ``2^-52`` of the magnitudes involved. A row's decision is taken from the float32 scores only
    when the runner-up trails the best by more than twice the sum of these bounds (doubled again for safety);
    then the float64 computation makes the same decision. Other rows are returned as ``unsure``.
    """

    def __init__(self, cols: torch.Tensor, sq: torch.Tensor, K: int, bias: torch.Tensor | None):
        self.K = K
        d = cols.shape[0]
        u = 2.0**-24
        self.gamma = 2.0 * ((d + 2) * u / (1 - (d + 2) * u) + (d + 2) * 2.0**-53)
        self.tiny = 2.0 * d * 2.0**-149  # underflowing products and sums
        self.tiny_h = 2.0 * math.sqrt(d) * 2.0**-149  # times ||h||: columns that round to float32 subnormals
        self.cols32 = cols.to(torch.float32)
        norms = torch.linalg.vector_norm(cols, dim=0)
        self.usable = bool(torch.isfinite(self.cols32).all()) and bool(torch.isfinite(norms).all())
        self.sq = sq.numpy()
        self.mean_norm = float(norms[:K].max()) if K else 0.0
        self.w_norm = float(norms[K:].max()) if cols.shape[1] > K else 0.0
        self.sq_max = float(sq.abs().max()) if K else 0.0
        self.bias = None if bias is None else bias.numpy()
        self.b_max = 0.0 if bias is None else float(bias.abs().max())
        self.has_w = cols.shape[1] > K

    def __call__(self, block: torch.Tensor):
        if not self.usable:
            return None
        f = block.numpy()
        hn = np.sqrt(np.einsum("ij,ij->i", f, f).astype(np.float64))
        if not len(hn) or not hn.max() * max(self.mean_norm, self.w_norm, 1.0) < 1e30:
            return None  # float32 products could overflow (or a norm did): score this block in float64
        tiny_rows = hn < 1e-15  # float32 squares may have underflowed: these rows are scored in float64
        hn *= 1.001  # the float32 sum of squares is within (d u) of the exact one: an upper bound of ||h||
        s = (block @ self.cols32).numpy().astype(np.float64)
        eps = 2.0**-52
        K = self.K
        rows = np.arange(len(f))
        tiny = self.tiny + self.tiny_h * hn
        # nearest center: D_c = ||mu_c||^2 - 2 h.mu_c, smallest wins; unsure when another D_c is within 2 bounds
        dist = self.sq - 2 * s[:, :K]
        ncc = dist.argmin(1)
        bound = 2 * (self.gamma * hn * self.mean_norm + tiny) + 2 * eps * (self.sq_max + 2 * hn * self.mean_norm)
        unsure = np.count_nonzero(dist <= (dist[rows, ncc] + 2 * bound)[:, None], axis=1) > 1
        unsure |= tiny_rows
        model = None
        if self.has_w:
            logit = s[:, K:] if self.bias is None else s[:, K:] + self.bias
            model = logit.argmax(1)
            bound = (self.gamma * hn * self.w_norm + tiny) + 2 * eps * (self.b_max + hn * self.w_norm)
            unsure |= np.count_nonzero(logit >= (logit[rows, model] - 2 * bound)[:, None], axis=1) > 1
            model = torch.from_numpy(model)
        return torch.from_numpy(ncc), model, torch.from_numpy(np.flatnonzero(unsure))


def _mean_cosine(M: np.ndarray) -> np.ndarray:
    """C x C cosines of the centered class means (columns of ``M``); the simplex ETF has -1/(C-1) off the diagonal."""
    norms = np.linalg.norm(M, axis=0)
    unit = M / np.where(norms > 0, norms, 1)
    return unit.T @ unit


class _PCASample:
    """The 2-D PCA of the features, kept for a deterministic subsample of at most ``PCA_POINTS`` rows.

    The axes are the top-2 eigenvectors of the total covariance of all rows (from the float64 statistics:
    within-class scatter plus the count-weighted scatter of the class means); pass 2 projects the sampled rows.
    """

    def __init__(self, stats: ClassStats, ids, num_samples: int, limit: int = PCA_POINTS):
        dev = stats.device
        sel = torch.as_tensor(ids, device=dev)
        n = stats.count[sel].to(torch.float64)
        means = stats.mean[sel]
        self.center = (n @ means) / n.sum()
        dm = means - self.center
        cov = stats.scatter / n.sum() + (dm.T * (n / n.sum())) @ dm
        lam, vec = torch.linalg.eigh(cov)
        lam, vec = lam.flip(0).clamp_min(0), vec.flip(1)[:, :2]
        vec = vec * torch.where(vec.gather(0, vec.abs().argmax(0, keepdim=True)) < 0, -1.0, 1.0)  # fixed signs
        if vec.shape[1] < 2:
            vec = torch.cat([vec, torch.zeros_like(vec)], 1)
        self.axes = vec
        total = float(lam.sum())
        self.ratio = [float(v) / total if total > 0 else 0.0 for v in lam[:2].tolist()]
        self.ratio += [0.0] * (2 - len(self.ratio))
        rng = np.random.default_rng(0)
        self.rows = np.sort(rng.choice(num_samples, size=min(limit, num_samples), replace=False))
        self.points, self.labels = [], []

    def add(self, start: int, h: torch.Tensor, y: torch.Tensor) -> None:
        lo, hi = np.searchsorted(self.rows, [start, start + len(h)])
        if hi > lo:
            local = torch.as_tensor(self.rows[lo:hi] - start, device=h.device)
            self.points.append(((h[local] - self.center) @ self.axes).cpu().numpy())
            self.labels.append(y[local.cpu()].numpy())

    def result(self) -> dict:
        pts = np.concatenate(self.points) if self.points else np.zeros((0, 2))
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, dtype=np.int64)
        parts = distributed.gather_objects((pts, labels))  # under torchrun: every rank's sample, in rank order
        pts = np.concatenate([p for p, _ in parts])
        labels = np.concatenate([lab for _, lab in parts])
        return {"points": [[float(f"{a:.5g}"), float(f"{b:.5g}")] for a, b in pts],
                "labels": [int(v) for v in labels],
                "explained_variance_ratio": self.ratio, "num_samples": int(len(pts)), "seed": 0}


def _subspace_metrics(stats: ClassStats, count, eps2, rank_tol, subspace_dim):
    """Ranks, coding rates and principal angles of the tracked classes that have samples."""
    d = stats.dim
    N = int(count.sum())
    warnings = []
    out = {"coding_rate_max": subspace.coding_rate_max(d, eps2)}
    lam_total = np.linalg.eigvalsh(stats.second_moment_total().cpu().numpy() / N)
    out["coding_rate"] = subspace.coding_rate(np.maximum(lam_total, 0), d, eps2)
    tracked = [c for c in stats.subspace_classes if count[c] > 0]
    per = {k: [] for k in ("rank_energy95", "rank_energy99", "rank_effective", "rank_numerical",
                           "coding_rate_class", "basis_dim", "spectrum")}
    bases = []
    zz = stats.zz.cpu().numpy()

    def decompose(item):  # one eigh per class, on parallel_map threads; only the k basis vectors are kept
        slot, c = item
        lam, vec = subspace.spectrum(zz[slot] / count[c])
        r95 = subspace.energy_rank(lam, 0.95)
        return lam, r95, np.ascontiguousarray(vec[:, : subspace_dim or max(r95, 1)])

    items = [(slot, c) for slot, c in enumerate(stats.subspace_classes) if count[c] > 0]
    for lam, r95, basis in subspace.parallel_map(decompose, items):
        k = basis.shape[1]
        per["rank_energy95"].append(r95)
        per["rank_energy99"].append(subspace.energy_rank(lam, 0.99))
        per["rank_effective"].append(subspace.effective_rank(lam))
        per["rank_numerical"].append(subspace.numerical_rank(lam, rank_tol))
        per["coding_rate_class"].append(subspace.coding_rate(lam, d, eps2))
        per["basis_dim"].append(k)
        top = lam[:SPECTRUM_KEEP]
        per["spectrum"].append((top / lam.sum() if lam.sum() > 0 else top).tolist())
        bases.append(basis)
    complete = stats.all_tracked or set(tracked) == set(np.flatnonzero(count).tolist())
    if complete and tracked:
        rc = float(np.dot(count[tracked] / N, per["coding_rate_class"]))
        out["coding_rate_within"], out["rate_reduction"] = rc, out["coding_rate"] - rc
    else:
        out["coding_rate_within"] = out["rate_reduction"] = None
        if tracked:
            warnings.append("coding_rate_within and rate_reduction need every class; they are left out because "
                            "subspace statistics were kept for only some classes")
    if len(bases) >= 2:
        angle, affinity = subspace.angle_matrices(bases)
        iu = np.triu_indices(len(bases), 1)
        out["angle_min_mean"], out["angle_min_min"] = float(angle[iu].mean()), float(angle[iu].min())
        k = np.array(per["basis_dim"])
        forced = int(np.count_nonzero((k[:, None] + k[None, :])[iu] > d))
        angles = {"class_ids": tracked, "angle_min": angle.tolist(), "subspace_affinity": affinity.tolist(),
                  "forced_zero_pairs": forced}
        if forced:
            warnings.append(f"{forced} of {len(iu[0])} class pairs have bases of k_c + k_c' > d={d} dimensions, so "
                            "their smallest principal angle is 0 by dimension count, not by measurement (each "
                            "class's k is per_class basis_dim); read subspace_affinity for those pairs, or fix k "
                            "with --subspace-dim")
    else:
        out["angle_min_mean"] = out["angle_min_min"] = None
        angles = {"class_ids": tracked, "angle_min": None, "subspace_affinity": None}
    per_class = {"subspace_class_ids": tracked, **per}
    return out, per_class, angles, warnings


def _shape_warnings(count: np.ndarray, ids: np.ndarray, d: int) -> list[str]:
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
                   f"by construction, not by collapse: {_short(single)}")
    small = [int(c) for c in ids if 1 < count[c] < 5 * d]
    if small:
        out.append(f"{len(small)} classes have fewer than 5*d={5 * d} samples, so their subspace estimates are "
                   f"rank-limited: {_short(small)}")
    return out


def _short(items: list, limit: int = 10) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")
