"""Benchmark of the metric engine at the field's shapes: ``analyze_file`` (default settings) on feature files shaped
like the layers people measure, against the goals of the scale issue.

Shapes (``--quick`` shrinks each; ``-C``/``-d``/``-n`` override one):

- ``imagenet``: C=1000, d=2048, N=50k (ImageNet-1k val through a ResNet-50). Each class lives near a random
  20-40-dimensional subspace around its mean, plus small isotropic noise; 50 samples per class; a classifier W, b.
  Goals: every metric for every class under the default memory budget (``rate_reduction`` and ``angle_min_mean``
  present, per-class ranks and angles for all 1000 classes), peak RSS <= 4 GiB, total time <= 20x one float64 X^T X.
- ``lm``: a 32000-way head, d=768, N=200k, Zipf labels (exponent 1.1: ~18k classes present, ~8.5k with one sample),
  features = class mean + noise, W (32000 x 768) and b in the file; also ``lm-pred``, the same rows with the model's
  ``predictions`` column (argmax of W h + b, computed in float32 as a model would) so that pass 2 reads them instead
  of computing W h + b. Goals: every collapse metric (nc1, nc1_cdnv, nc2 of means and W, nc3, nc4, accuracies) for
  all present classes, peak RSS <= 4 GiB, report JSON <= 16 MiB (its side file of large matrices is measured apart).
  With ``--rhubarbwu DIR``, the same collapse metrics are also computed by rhubarbwu/neural-collapse's accumulators
  and measure functions (float64, CPU, the same file in batches; see :func:`child_rhubarbwu` for the mapping),
  timed in their own process, against nc-probe with every metric (``lm``) and with the collapse metrics alone
  (``lm-collapse``: ``classes=[]``, ``angle_classes=0``).
- ``lm256k``: a language model's token-level head at today's vocabularies: V=262144 (Gemma's 256k), d=2048, N=1M
  tokens, Zipf 1.1 labels over the vocabulary (token ids permuted, so the frequent tokens are not 0..K-1; ~100k
  tokens present), features = class mean + noise in float32 (an 8 GB file, written in chunks; W (V x d) float32,
  2 GiB, and b in the file), and the model's ``predictions`` column: W h + b over 256k rows for 1M tokens would be
  1e18 flops, so the predictions are drawn (the token itself with probability 0.4, else a token drawn from the
  same Zipf law, often one without samples) and pass 2 reads them as an LM front end would store them. Goals:
  every collapse metric present, each either exact for every present token or on the most frequent ones as the
  report's ``settings["frequent_classes"]`` says; peak RSS <= W's bytes + 4 GiB (the default 2 GiB
  ``--memory-budget`` bounds the subspace groups and bases; the class means take K x d x 8 bytes, 1.6 GB at
  K = 100k). No 5x-N run (a 41 GB file).
- ``highrank``: C=1000, d=512, N=100k, full-rank classes (class mean + isotropic Gaussian noise: early training).
  Goals: every metric for every class, total time <= 60x one float64 X^T X, report JSON <= 16 MiB.
- memory flatness: each shape again at 5x N (``<shape>-5x``); goal: peak RSS at most 10% above the N run's.

Every figure is a ratio of two timings, or of two peak RSS, measured in this run on this machine. Each case runs in
a fresh subprocess (peak RSS is ``VmHWM`` of ``/proc/self/status``, per case): it analyses the file, saves the report
(``report.json`` and, beside it, the side file of large matrices), takes its peak RSS, then times the X^T X
baseline of ``bench/metrics.py`` on the same file (float64 ``a.T @ a`` accumulated chunk by chunk from plain reads;
a warm-up, then the median of ``--xtx-repeats``). The analysis time is the wall time of ``analyze_file`` (the
median of ``--repeats`` analyses; the first gives the peak RSS and the report). The table's ``ranks/angles`` are the
classes with per-class ranks and the classes in the principal-angle matrices (the engine's default caps the latter
at the 1000 most frequent classes).

Usage::

    python -m bench.scale --shape imagenet --quick
    python -m bench.scale --shape all --json scale.json
    git --git-dir=/work/.mirror/rhubarbwu+neural-collapse/repo archive HEAD | tar -x -C /tmp/nc-rhubarbwu
    python -m bench.scale --shape lm --rhubarbwu /tmp/nc-rhubarbwu

Reading ``--quick`` figures: they check that every case runs and is complete, not the goals. At those sizes one
X^T X takes ~10 ms, so the time ratios measure fixed costs; and N stays below one analysis chunk (about 256 MiB of
float64 rows), so memory still grows with N there, while at the full shapes each pass reads fixed-size chunks. The
lm 5x run also has more classes present (Zipf labels), which the flatness ratio includes. Each full-shape analysis
takes minutes; rhubarbwu's accumulators at the lm shape cost about 4 x 2 N C d float64 flops (their class one-hot and
their W h and NCC products are dense C x batch matrices), i.e. tens of minutes on a few cores.

rhubarbwu's code is imported from DIR at run time, never copied here. Feature files live in a temporary directory
that is removed at the end (``--tmpdir`` chooses where: the full shapes take up to ~3 GB at a time).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_info, cpu_name  # noqa: E402
from bench.metrics import peak_rss_bytes, xtx_chunked  # noqa: E402

GiB, MiB = 1 << 30, 1 << 20
FLAT_FACTOR = 5  # the memory-flatness variant has this many times the rows
FLAT_GOAL = 1.10
GEN_BYTES = 64 * MiB  # float32 features generated per chunk
PRED_ROWS = 2048  # rows per W h + b block when generating the predictions column
RHUB_BATCH = 2048  # rows per accumulate() call of rhubarbwu's accumulators (their one-hot is C x batch float64)
RHUB_TILE = 128  # tile_size of rhubarbwu's tiled kernels (their example uses 64)
COLLAPSE_KEYS = ("nc1", "nc1_cdnv", *(f"nc2_{k}_{v}" for v in "MW" for k in ("equinorm", "equiangle", "maxangle",
                                                                          "etf")), "nc3", "nc4", "acc_model", "acc_ncc")


@dataclass(frozen=True)
class Shape:
    name: str
    C: int
    d: int
    n: int
    quick: tuple[int, int, int]  # C, d, N of --quick
    xtx_goal: float | None = None  # analysis time / one float64 X^T X
    rss_goal: int | None = None  # bytes
    json_goal: int | None = None  # bytes of report.json
    needs: str = "all"  # "all": every metric for every class; "collapse": every collapse metric
    rss_beyond_w: int | None = None  # peak RSS goal on top of the bytes of W in the file
    flat: bool = True  # also run the memory-flatness variant at 5x N


SHAPES = {
    "imagenet": Shape("imagenet", 1000, 2048, 50_000, (100, 256, 5_000), xtx_goal=20, rss_goal=4 * GiB),
    "lm": Shape("lm", 32_000, 768, 200_000, (4000, 128, 20_000), rss_goal=4 * GiB, json_goal=16 * MiB,
                needs="collapse"),
    "highrank": Shape("highrank", 1000, 512, 100_000, (100, 128, 10_000), xtx_goal=60, json_goal=16 * MiB),
    "lm256k": Shape("lm256k", 262_144, 2048, 1_000_000, (65_536, 128, 40_000), needs="collapse",
                    rss_beyond_w=4 * GiB, flat=False),
}
LM_ACCURACY = 0.4  # lm256k: the drawn predictions' share of right tokens


# ---------------------------------------------------------------------------------------------- data
def _gen_rows(d: int) -> int:
    return max(1024, GEN_BYTES // (4 * d))


def _balanced_labels(rng, n: int, C: int) -> np.ndarray:
    y = np.arange(n) % C
    rng.shuffle(y)
    return y


def _by_class(y: np.ndarray):
    """(class, row indices) of each class present in ``y``."""
    order = np.argsort(y, kind="stable")
    classes, starts = np.unique(y[order], return_index=True)
    return zip(classes.tolist(), np.split(order, starts[1:]))


def _classifier(rng, means: np.ndarray, gain: float, noise: float, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W = gain * centred means + noise (a partly collapsed classifier), as float64."""
    C, d = means.shape
    W = gain * (means - means.mean(0)) + noise * rng.standard_normal((C, d)) / np.sqrt(d)
    return W.astype(np.float64), bias.astype(np.float64)


def make_token_file(shape: Shape, n: int, path: Path, seed: int = 0) -> dict:
    """The ``lm256k`` file: ``n`` tokens of a V-way head (see the module docstring), written chunk by chunk. Only the
    present tokens' means are drawn (never a V x d float64 array); W is V x d float32."""
    from nc_probe import StoreWriter

    V, d = shape.C, shape.d
    model = np.random.default_rng(seed)
    data = np.random.default_rng([seed, n])
    p_rank = np.arange(1, V + 1, dtype=np.float64) ** -1.1
    p = np.empty(V)
    p[model.permutation(V)] = p_rank / p_rank.sum()  # frequent tokens spread over the ids
    y_all = data.choice(V, size=n, p=p)
    present = np.unique(y_all)
    means = model.standard_normal((len(present), d), dtype=np.float32)
    means *= np.float32(1 / np.sqrt(d))
    W = model.standard_normal((V, d), dtype=np.float32)
    W *= np.float32(0.5 / np.sqrt(d))
    W[present] += 4.0 * (means - means.mean(0))
    logp = np.log(p)
    b = (0.1 * (logp - logp.mean())).astype(np.float32)
    writer = StoreWriter(path, metadata={"layer": f"bench-scale-{shape.name}", "seed": seed})
    try:
        rows = _gen_rows(d)
        for start in range(0, n, rows):
            y = y_all[start:start + rows]
            h = data.standard_normal((len(y), d), dtype=np.float32)
            h *= np.float32(0.5 / np.sqrt(d))
            h += means[np.searchsorted(present, y)]
            pred = np.where(data.random(len(y)) < LM_ACCURACY, y, data.choice(V, size=len(y), p=p))
            writer.append(h, y, predictions=pred)
        writer.close(W=W, b=b)
    except BaseException:
        writer.abort()
        raise
    counts = np.bincount(y_all, minlength=V)
    return {"present_classes": int(len(present)), "single_sample_classes": int(np.sum(counts == 1)),
            "max_class_count": int(counts.max()), "median_count_present": float(np.median(counts[present])),
            "w_bytes": int(W.nbytes)}


def make_files(shape: Shape, n: int, paths: dict[str, Path], seed: int = 0) -> dict:
    """Write the shape's features for ``n`` rows with StoreWriter, chunk by chunk, to ``paths["main"]`` (and, for
    ``lm`` when ``paths`` has ``"pred"``, the same rows with the ``predictions`` column to that path). The model
    (means, subspaces, W, b) depends on ``seed`` only, the rows on ``n`` too. Returns the label counts' summary."""
    from nc_probe import StoreWriter

    C, d = shape.C, shape.d
    model = np.random.default_rng(seed)
    data = np.random.default_rng([seed, n])
    means = (model.standard_normal((C, d)) / np.sqrt(d)).astype(np.float32)
    bases = scales = None
    if shape.name == "imagenet":
        ranks = model.integers(20, 41, C).clip(1, d)
        bases = [np.linalg.qr(model.standard_normal((d, r)))[0].astype(np.float32) for r in ranks]
        scales = [(np.linspace(1.5, 0.3, r) / np.sqrt(r)).astype(np.float32) for r in ranks]
        noise = 0.1
        W, b = _classifier(model, means, 4.0, 0.5, 0.01 * model.standard_normal(C))
        y_all = _balanced_labels(data, n, C)
    elif shape.name == "lm":
        p_rank = np.arange(1, C + 1, dtype=np.float64) ** -1.1
        p = np.empty(C)
        p[model.permutation(C)] = p_rank / p_rank.sum()  # frequent tokens spread over the ids
        noise = 0.5
        logp = np.log(p)
        W, b = _classifier(model, means, 4.0, 0.5, 0.1 * (logp - logp.mean()))
        y_all = data.choice(C, size=n, p=p)
    else:  # highrank: class mean + isotropic noise of the same norm, W barely aligned (early training)
        noise = 1.0
        W, b = _classifier(model, means, 0.5, 1.0, 0.01 * model.standard_normal(C))
        y_all = _balanced_labels(data, n, C)
    W32, b32 = W.astype(np.float32), b.astype(np.float32)
    writers = {k: StoreWriter(v, metadata={"layer": f"bench-scale-{shape.name}", "seed": seed}) for k, v in
               paths.items()}
    try:
        rows = _gen_rows(d)
        for start in range(0, n, rows):
            y = y_all[start:start + rows]
            h = data.standard_normal((len(y), d), dtype=np.float32)
            h *= np.float32(noise / np.sqrt(d))
            h += means[y]
            if bases is not None and scales is not None:
                for c, idx in _by_class(y):
                    g = data.standard_normal((len(idx), len(scales[c])), dtype=np.float32) * scales[c]
                    h[idx] += g @ bases[c].T
            for key, w in writers.items():
                pred = None
                if key == "pred":
                    pred = np.concatenate([np.argmax(h[s:s + PRED_ROWS] @ W32.T + b32, axis=1)
                                           for s in range(0, len(h), PRED_ROWS)])
                w.append(h, y, predictions=pred)
        for w in writers.values():
            w.close(W=W, b=b)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    counts = np.bincount(y_all, minlength=C)
    return {"present_classes": int(np.count_nonzero(counts)), "single_sample_classes": int(np.sum(counts == 1)),
            "max_class_count": int(counts.max()), "median_count_present": float(np.median(counts[counts > 0]))}


class _Rows:
    """Plain reads of a safetensors file's row arrays (independent of the engine under test)."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
            self.header = json.loads(f.read(hlen))
        self.start = 8 + hlen
        self.dtypes = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}

    def shape(self, name: str) -> tuple:
        return tuple(self.header[name]["shape"])

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        info = self.header[name]
        shape = info["shape"]
        dtype = np.dtype(self.dtypes[info["dtype"]])
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        stop = shape[0] if stop is None else stop
        with open(self.path, "rb") as f:
            f.seek(self.start + info["data_offsets"][0] + start * row)
            raw = f.read((stop - start) * row)
        return np.frombuffer(raw, dtype=dtype).reshape([stop - start, *shape[1:]])


# ---------------------------------------------------------------------------------------------- children
# null by design in a default run of these shapes: the opt-in rules, lidar (no views: each row's source sample) and
# the minority measures (defined when the class counts differ)
NOT_ASKED = {"acc_ncc_mahalanobis", "acc_nearest_subspace", "acc_linear_probe", "lidar", "minority_cosine_mean",
             "minority_norm_spearman"}


def completeness(report, expect: int, needs: str) -> dict:
    """Whether the report has what the shape's goal asks, for the ``expect`` present classes."""
    m, pc = report.metrics, report.per_class
    missing = sorted(k for k, v in m.items() if v is None and k not in NOT_ASKED)
    collapse_missing = [k for k in COLLAPSE_KEYS if m.get(k) is None]
    per_class_acc = pc.get("acc_model") or []
    collapse_ok = (not collapse_missing and report.inputs["num_classes"] == expect and len(per_class_acc) == expect)
    ranks = pc.get("rank_energy95") or []
    ranks_ok = len(pc.get("subspace_class_ids") or []) == expect and all(r is not None for r in ranks)
    angle_classes = len(report.angles.get("class_ids") or [])
    ks = [k for k in pc.get("basis_dim") or [] if k is not None]  # the k of each class's basis: angles cost ~k^2
    everything = collapse_ok and not missing and ranks_ok and angle_classes == expect
    return {"complete": collapse_ok if needs == "collapse" else everything, "collapse_complete": collapse_ok,
            "missing_metrics": missing, "classes_analysed": report.inputs["num_classes"], "expected_classes": expect,
            "classes_with_ranks": len(ranks), "ranks_complete": ranks_ok, "angle_classes": angle_classes,
            "mean_basis_dim": float(np.mean(ks)) if ks else None, "everything_complete": everything}


def child_ours(path: Path, out_dir: Path, expect: int, needs: str, collapse_only: bool, xtx_repeats: int,
               repeats: int = 1) -> dict:
    """One analysis of ``path`` (default settings; ``collapse_only``: no subspace metrics), its report saved in
    ``out_dir``, the peak RSS; then ``repeats - 1`` more analyses (timing only: the time is the median) and the
    X^T X baseline."""
    import torch

    import nc_probe

    out: dict = {"torch_threads": torch.get_num_threads(), "engine": os.path.dirname(nc_probe.__file__),
                 "rss_after_import": peak_rss_bytes()}
    kw = {"classes": [], "angle_classes": 0} if collapse_only else {}
    walls, cpus, stage_runs = [], [], []
    for i in range(max(repeats, 1)):
        t0, c0 = time.perf_counter(), time.process_time()
        report = nc_probe.analyze_file(path, **kw)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        stage_runs.append(dict(report.timings))
        if i == 0:
            out["peak_rss_analysis"] = peak_rss_bytes()
            t = time.perf_counter()
            json_path = report.save(out_dir / "report.json")
            out["save_s"] = time.perf_counter() - t
            out["peak_rss"] = peak_rss_bytes()
            side = out_dir / report.matrices_file if report.matrices_file else None
            out["json_bytes"] = json_path.stat().st_size
            out["side_bytes"] = side.stat().st_size if side is not None and side.is_file() else 0
            out["metrics"] = dict(report.metrics)
            out["check"] = completeness(report, expect, "collapse" if collapse_only else needs)
            out["warnings"] = [str(w)[:240] for w in report.warnings]
            out["settings"] = {k: report.settings.get(k) for k in ("chunk_rows", "memory_budget", "frequent_classes")}
        del report
        gc.collect()
    out["analysis_runs_s"], out["analysis_cpu_runs_s"] = walls, cpus
    out["analysis_s"], out["analysis_cpu_s"] = statistics.median(walls), statistics.median(cpus)
    out["timings"] = {k: statistics.median([r[k] for r in stage_runs]) for k in stage_runs[0]}
    if xtx_repeats:
        xtx_chunked(path)  # warm-up: page cache, BLAS buffers
        runs = [xtx_chunked(path) for _ in range(xtx_repeats)]
        out["xtx_runs_s"] = [r["xtx_file"] for r in runs]
        out["xtx_s"] = statistics.median(out["xtx_runs_s"])
        out["xtx_blas_s"] = statistics.median([r["xtx_blas"] for r in runs])
    return out


def child_rhubarbwu(path: Path, root: Path, batch: int, tile: int) -> dict:
    """The collapse metrics of ``path`` by rhubarbwu/neural-collapse (imported from ``root``), float64 on the CPU,
    driven as their README and ``examples/mnist.py`` do: three passes over the file in batches of ``batch`` rows
    (MeanAccumulator; VarNormAccumulator + CovarAccumulator with the means; DecAccumulator), then their measure
    functions on the present classes (``filter_indices_by_n_samples(1)``; ``compute(idxs)`` gives their means and
    the mean of those means, nc-probe's global mean).

    Which of theirs gives which of ours:

    - nc1 = ``covariance_ratio(covar_within, means, mG)`` (pinv; ``CovarAccumulator.compute()`` is scatter / N);
    - nc1_cdnv = ``variability_cdnv(var_norms, means, tile_size=tile)``;
    - nc2_equinorm_M / _W = population std / mean of ``mean_norms(means, mG)`` / ``mean_norms(W)``;
    - nc2_equiangle_M / _W, nc2_maxangle_M / _W = ``kernel_grid`` with a cosine kernel built on their ``tiling``
      (rows normalised by ``kernel_grid``), reduced by their ``symm_reduce`` as ``kernel_stats`` does: sqrt of the
      variance, and the mean of |cos + 1/(K-1)|;
    - nc2_etf_M / _W = ``simplex_etf_error(means, mG)`` / ``simplex_etf_error(W)``;
    - nc4 = 1 - ``clf_ncc_agreement(dec)``. Their linear rule is ``argmax W h`` (no bias) and their NCC runs over all
      C means: the bias is folded in exactly by appending a constant 1 to h, b to W and 1 to the means (the 1s cancel
      in every distance), and absent classes get a far-away mean, so that the NCC runs over the present classes as
      nc-probe's does. FAISS is not used (``create_index`` is not called): NCC in float64 by their manual path;
    - nc3: no function of theirs computes nc-probe's ``||W^T/||W|| - M/||M|| ||^2``; their NC3,
      ``self_duality_error(W, means, mG)`` (the product form ``||W M/||W M|| - E||``), is timed and reported as
      ``nc3_etf``, not compared. Their library has no accuracies.

    Each pass and measure function runs in a try block: one that fails (memory at this C) is recorded, and the
    others go on (those that need a failed pass's result are left out). The peak RSS after each stage is recorded.
    """
    sys.path.insert(0, str(root))
    import torch as pt
    from neural_collapse import measure
    from neural_collapse.accumulate import CovarAccumulator, DecAccumulator, MeanAccumulator, VarNormAccumulator
    from neural_collapse.kernels import kernel_grid
    from neural_collapse.util import symm_reduce, tiling

    f64 = pt.float64
    rows = _Rows(path)
    n, d = rows.shape("features")
    W = pt.from_numpy(rows.read("W").copy())
    b = pt.from_numpy(rows.read("b").copy())
    C = W.shape[0]
    out: dict = {"module": str(Path(sys.modules["neural_collapse"].__file__).parent), "batch": batch, "tile": tile,
                 "torch_threads": pt.get_num_threads(), "stages_s": {}, "peak_rss_after": {}, "errors": {},
                 "metrics": {}}
    t_start = time.perf_counter()

    def batches():
        for s in range(0, n, batch):
            e = min(s + batch, n)
            yield (pt.from_numpy(rows.read("features", s, e).astype(np.float64)),
                   pt.from_numpy(rows.read("labels", s, e).astype(np.int64)))

    def stage(name: str, fn):
        t = time.perf_counter()
        try:
            value = fn()
        except (RuntimeError, MemoryError) as e:  # e.g. "DefaultCPUAllocator: can't allocate memory"
            out["errors"][name] = f"{e.__class__.__name__}: {str(e)[:300]}"
            value = None
        out["stages_s"][name] = time.perf_counter() - t
        out["peak_rss_after"][name] = peak_rss_bytes()
        return value

    def pass_means():
        acc = MeanAccumulator(C, d, "cpu", f64)
        for X, Y in batches():
            acc.accumulate(X, Y)
        return acc

    def done() -> dict:
        out["total_s"] = time.perf_counter() - t_start
        out["peak_rss"] = peak_rss_bytes()
        return out

    mean_acc = stage("pass1_means", pass_means)
    if mean_acc is None:
        return done()
    means, _ = mean_acc.compute()
    present = mean_acc.filter_indices_by_n_samples(1)
    means_p, mG = mean_acc.compute(present)
    K = len(means_p)
    out["present_classes"] = K

    def pass_variances():
        var_acc = VarNormAccumulator(C, d, "cpu", f64, M=means)
        cov_acc = CovarAccumulator(C, d, "cpu", f64, M=means)
        for X, Y in batches():
            var_acc.accumulate(X, Y, means)
            cov_acc.accumulate(X, Y, means)
        return var_acc.compute(present)[0], cov_acc.compute()

    variances = stage("pass2_varnorm_covar", pass_variances)
    if variances is None:
        return done()
    var_norms_p, covar_within = variances

    def pass_decisions():
        far = means.clone()
        absent = pt.ones(C, dtype=pt.bool)
        absent[present] = False
        far[absent] = 1e6
        M_aug = pt.cat([far, pt.ones(C, 1, dtype=f64)], 1)
        W_aug = pt.cat([W, b[:, None]], 1)
        dec = DecAccumulator(C, d + 1, "cpu", f64, M=M_aug, W=W_aug)
        for X, Y in batches():
            dec.accumulate(pt.cat([X, pt.ones(len(X), 1, dtype=f64)], 1), Y, W_aug, M_aug)
        return dec

    dec = stage("pass3_decisions", pass_decisions)
    met = out["metrics"]
    met["nc4"] = None if dec is None else stage("nc4", lambda: 1 - measure.clf_ncc_agreement(dec))
    met["nc1"] = stage("nc1", lambda: measure.covariance_ratio(covar_within, means_p, mG))
    W_p = W[present]

    def equinorm(norms):
        return float(norms.std(unbiased=False) / norms.mean())

    met["nc2_equinorm_M"] = stage("nc2_equinorm_M", lambda: equinorm(measure.mean_norms(means_p, mG)))
    met["nc2_equinorm_W"] = stage("nc2_equinorm_W", lambda: equinorm(measure.mean_norms(W_p)))
    met["nc2_etf_M"] = stage("nc2_etf_M", lambda: measure.simplex_etf_error(means_p, mG))
    met["nc2_etf_W"] = stage("nc2_etf_W", lambda: measure.simplex_etf_error(W_p))
    met["nc3_etf"] = stage("nc3_etf", lambda: measure.self_duality_error(W_p, means_p, mG))

    def cosine_kernel(data, tile_size=None):
        return tiling(data, lambda a, c: a @ c.mT, tile_size)

    def angles(vectors, centre):
        grid = kernel_grid(vectors, centre, cosine_kernel, tile)
        avg = symm_reduce(grid)
        var = symm_reduce(grid, lambda row: pt.sum((row - avg) ** 2))
        dev = symm_reduce(grid, lambda row: pt.sum(pt.abs(row + 1.0 / (K - 1))))
        return float(var) ** 0.5, float(dev)

    for key, vectors, centre in (("M", means_p, mG), ("W", W_p, 0)):
        got = stage(f"nc2_angles_{key}", lambda v=vectors, c=centre: angles(v, c))
        met[f"nc2_equiangle_{key}"], met[f"nc2_maxangle_{key}"] = got if got is not None else (None, None)
    met["nc1_cdnv"] = stage("nc1_cdnv", lambda: measure.variability_cdnv(var_norms_p, means_p, tile_size=tile))
    return done()


def run_child(args: list[str], threads: int | None) -> dict:
    """``python -m bench.scale --child ...`` in a fresh process; a failure (e.g. killed for memory) is a result."""
    env = dict(os.environ)
    if threads:
        env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "bench.scale", *args], cwd=ROOT, capture_output=True, text=True,
                         env=env)
    if res.returncode != 0:
        return {"failed": res.returncode, "stderr": res.stderr[-3000:], "wall_s": time.perf_counter() - t}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- one shape
def _ours(path: Path, tmp: Path, tag: str, expect: int, shape: Shape, xtx_repeats: int, threads,
          collapse_only: bool = False, repeats: int = 1) -> dict:
    out_dir = tmp / f"report-{tag}"
    out_dir.mkdir()
    args = ["--child", "ours", "--file", str(path), "--out", str(out_dir), "--expect", str(expect), "--needs",
            shape.needs, "--xtx-repeats", str(xtx_repeats), "--repeats", str(repeats)]
    args += ["--collapse-only"] if collapse_only else []
    r = run_child(args, threads)
    shutil.rmtree(out_dir, ignore_errors=True)
    if "failed" not in r:
        r["ratio_vs_xtx"] = r["analysis_s"] / r["xtx_s"] if r.get("xtx_s") else None
    print(f"  {tag}: {_brief(r)}", file=sys.stderr)
    return r


def _brief(r: dict) -> str:
    if "failed" in r:
        return f"FAILED (status {r['failed']}): {r['stderr'].strip().splitlines()[-1:]}"
    k = r["check"].get("mean_basis_dim") if "check" in r else None
    return (f"{r['analysis_s']:.1f} s, peak RSS {r['peak_rss'] / MiB:.0f} MiB, complete={r['check']['complete']}"
            + (f", mean basis k {k:.1f}" if k is not None else "")
            if "check" in r else f"{r['total_s']:.1f} s, peak RSS {r['peak_rss'] / MiB:.0f} MiB")


def bench_shape(shape: Shape, tmp: Path, args) -> dict:
    fig: dict = {"C": shape.C, "d": shape.d, "n": shape.n, "goals": {"xtx": shape.xtx_goal, "rss": shape.rss_goal,
                                                                      "json": shape.json_goal, "flat": FLAT_GOAL},
                 "cases": {}}
    main = tmp / f"{shape.name}.safetensors"
    paths = {"main": main}
    if shape.name == "lm":
        paths["pred"] = tmp / f"{shape.name}-pred.safetensors"
    t = time.perf_counter()
    fig["data"] = make_token_file(shape, shape.n, main) if shape.name == "lm256k" else make_files(shape, shape.n, paths)
    fig["data"]["gen_s"] = time.perf_counter() - t
    if shape.rss_beyond_w is not None:
        fig["goals"]["rss"] = fig["data"]["w_bytes"] + shape.rss_beyond_w
    fig["data"]["file_bytes"] = main.stat().st_size
    expect = fig["data"]["present_classes"]
    print(f"{shape.name}: wrote N={shape.n:,} x d={shape.d} float32, C={shape.C} ({expect:,} present), "
          f"{main.stat().st_size / GiB:.2f} GiB in {fig['data']['gen_s']:.1f} s", file=sys.stderr)
    cases = fig["cases"]
    cases[shape.name] = _ours(main, tmp, shape.name, expect, shape, args.xtx_repeats, args.threads,
                              repeats=args.repeats)
    if "pred" in paths:
        cases[f"{shape.name}-pred"] = _ours(paths["pred"], tmp, f"{shape.name}-pred", expect, shape,
                                             args.xtx_repeats, args.threads, repeats=args.repeats)
        paths["pred"].unlink()
    if shape.name == "lm":
        fig["rhubarbwu"] = compare_rhubarbwu(main, tmp, expect, shape, args, cases[shape.name])
    main.unlink()
    if not args.no_flat and shape.flat:
        big = tmp / f"{shape.name}-{FLAT_FACTOR}x.safetensors"
        n_big = FLAT_FACTOR * shape.n
        data_big = make_files(shape, n_big, {"main": big})
        print(f"{shape.name}: wrote N={n_big:,} ({data_big['present_classes']:,} classes present)", file=sys.stderr)
        r = cases[f"{shape.name}-{FLAT_FACTOR}x"] = _ours(big, tmp, f"{shape.name}-{FLAT_FACTOR}x",
                                                           data_big["present_classes"], shape, 1, args.threads)
        big.unlink()
        base = cases[shape.name]
        fig["flat"] = {"n_small": shape.n, "n_big": n_big, "data_big": data_big,
                       "peak_rss_small": base.get("peak_rss"), "peak_rss_big": r.get("peak_rss"),
                       "ratio": r["peak_rss"] / base["peak_rss"] if "peak_rss" in r and "peak_rss" in base
                       else None}
    return fig


def compare_rhubarbwu(path: Path, tmp: Path, expect: int, shape: Shape, args, ours_all: dict) -> dict:
    """rhubarbwu's collapse metrics of ``path`` (:func:`child_rhubarbwu`) against ours: every metric (``ours_all``,
    measured already) and the collapse metrics alone (measured here), times and values."""
    if not args.rhubarbwu:
        print("  rhubarbwu comparison skipped: pass --rhubarbwu DIR (an export of rhubarbwu/neural-collapse, "
              "e.g. git --git-dir=.../repo archive HEAD | tar -x -C DIR)", file=sys.stderr)
        return {"skipped": "no --rhubarbwu DIR given"}
    root = args.rhubarbwu.resolve()
    if not (root / "neural_collapse" / "accumulate.py").is_file():
        raise SystemExit(f"--rhubarbwu {root}: no neural_collapse/accumulate.py there")
    ours_c = _ours(path, tmp, f"{shape.name}-collapse", expect, shape, 0, args.threads, collapse_only=True,
                   repeats=args.repeats)
    theirs = run_child(["--child", "rhubarbwu", "--file", str(path), "--rhubarbwu", str(root), "--batch",
                        str(args.rhubarbwu_batch), "--tile", str(args.rhubarbwu_tile)], args.threads)
    print(f"  rhubarbwu: {_brief(theirs)}", file=sys.stderr)
    out: dict = {"ours_collapse_only": ours_c, "theirs": theirs}
    if "failed" in theirs:
        return out
    if "analysis_s" in ours_all:
        out["ratio_all_metrics"] = ours_all["analysis_s"] / theirs["total_s"]
    if "analysis_s" in ours_c:
        out["ratio_collapse_only"] = ours_c["analysis_s"] / theirs["total_s"]
    diffs = {}
    ref = ours_all.get("metrics") or ours_c.get("metrics") or {}
    for k, v in theirs["metrics"].items():
        if k in ref and v is not None and ref[k] is not None:
            diffs[k] = abs(v - ref[k]) / max(abs(ref[k]), 1e-300)
    out["rel_diff"] = diffs
    return out


# ---------------------------------------------------------------------------------------------- report
def machine() -> dict:
    info = cpu_info()
    mem = None
    try:
        mem = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return {"cpu": cpu_name(info), "cpus": os.cpu_count(),
            "cores_per_socket": info.get("cpu cores"),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "memory_bytes": mem, "torch": metadata.version("torch"), "numpy": np.__version__,
            "python": platform.python_version(), "loadavg_end": os.getloadavg()}


def _goal(value, goal, fmt: str) -> str:
    if value is None:
        return "-"
    text = format(value, fmt)
    return text if goal is None else f"{text} {'ok' if value <= goal else 'OVER'} (<= {format(goal, fmt)})"


def print_tables(figures: dict) -> None:
    mc = figures["machine"]
    print(f"\nnc-probe scale benchmark ({'quick' if figures['quick'] else 'full'}) on {mc['cpu']}, {mc['cpus']} CPUs, "
          f"torch {mc['torch']}, numpy {mc['numpy']}, Python {mc['python']}, load {mc['loadavg_end'][0]:.1f}")
    head = (f"  {'case':<16}{'N':>10}{'C present':>10}{'total s':>9}{'XtX s':>8}  {'ratio (goal)':<22}"
            f"{'peak RSS MiB (goal)':<26}{'JSON MiB (goal)':<20}{'side MiB':>9}{'ranks/angles':>14}  complete")
    print(head)
    stages = []
    for s in figures["shapes"].values():
        for tag, r in s["cases"].items():
            n = s["flat"]["n_big"] if tag.endswith("x") and "flat" in s else s["n"]
            if "failed" in r:
                print(f"  {tag:<16}{n:>10,}  FAILED (status {r['failed']})")
                continue
            g = s["goals"]
            ratio = _goal(r.get("ratio_vs_xtx"), g["xtx"], ".1f")
            rss = _goal(r["peak_rss"] / MiB, None if g["rss"] is None else g["rss"] / MiB, ".0f")
            js = _goal(r["json_bytes"] / MiB, None if g["json"] is None else g["json"] / MiB, ".2f")
            ck = r["check"]
            done = "yes" if ck["complete"] else f"NO (missing {ck['missing_metrics'][:4]}, ranks " \
                f"{ck['classes_with_ranks']}/{ck['expected_classes']}, angles {ck['angle_classes']})"
            xtx = f"{r['xtx_s']:8.2f}" if r.get("xtx_s") else f"{'-':>8}"
            cover = f"{ck['classes_with_ranks']}/{ck['angle_classes']}"
            print(f"  {tag:<16}{n:>10,}{ck['expected_classes']:>10,}{r['analysis_s']:9.2f}{xtx}  {ratio:<22}"
                  f"{rss:<26}{js:<20}{r['side_bytes'] / MiB:9.2f}{cover:>14}  {done}")
            stages.append((tag, r["timings"], r["save_s"]))
    print("  stages (report.timings, s; the subspace spectra between the passes on the CPU, beside pass 2 on a GPU):")
    for tag, t, save in stages:
        print(f"    {tag:<16}" + "  ".join(f"{k}={v:.2f}" for k, v in t.items()) + f"  save={save:.2f}")
    for s in figures["shapes"].values():
        for tag, r in s["cases"].items():
            fc = (r.get("settings") or {}).get("frequent_classes")
            if "check" in r:
                print(f"  {tag}: " + ("every collapse metric over every present class" if fc is None else
                      f"pair sweeps over the {fc['pairs']:,} and nearest class mean over the {fc['ncc']:,} most "
                      f"frequent of {fc['classes']:,} classes (top-K: nc1_cdnv, nc2_maxangle_M/W, gnc2_log_*, "
                      "pair summaries; acc_ncc, nc4); every other metric exact over every present class"))
    for name, s in figures["shapes"].items():
        a, p = s["cases"].get(name, {}), s["cases"].get(f"{name}-pred", {})
        if "metrics" in a and "metrics" in p:
            diff = {k: abs(a["metrics"][k] - p["metrics"][k]) for k in ("nc4", "acc_model")
                    if a["metrics"].get(k) is not None and p["metrics"].get(k) is not None}
            print(f"  {name}-pred (stored float32 predictions) vs {name} (float64 W h + b in pass 2): "
                  + ", ".join(f"|d {k}| = {v:.2e}" for k, v in diff.items()))
        f = s.get("flat")
        if f and f.get("ratio") is not None:
            print(f"  memory flatness {name}: peak RSS N={f['n_small']:,}: {f['peak_rss_small'] / MiB:.0f} MiB, "
                  f"N={f['n_big']:,}: {f['peak_rss_big'] / MiB:.0f} MiB, ratio {f['ratio']:.3f} "
                  f"{'ok' if f['ratio'] <= FLAT_GOAL else 'OVER'} (<= {FLAT_GOAL})")
        rh = s.get("rhubarbwu")
        if rh is None:
            continue
        if "skipped" in rh:
            print(f"  rhubarbwu comparison ({name}): skipped ({rh['skipped']})")
            continue
        th = rh["theirs"]
        if "failed" in th:
            print(f"  rhubarbwu comparison ({name}): their run FAILED (status {th['failed']}): "
                  f"{th['stderr'].strip().splitlines()[-1:]}")
            continue
        ours_c = rh["ours_collapse_only"]
        print(f"  rhubarbwu/neural-collapse ({name}, float64, batch {th['batch']}, tile {th['tile']}, "
              f"{th['present_classes']:,} present classes): {th['total_s']:.2f} s, peak RSS "
              f"{th['peak_rss'] / MiB:.0f} MiB")
        if "ratio_all_metrics" in rh:
            print(f"    ours (every metric) / theirs (collapse metrics): {rh['ratio_all_metrics']:.3f}")
        if "ratio_collapse_only" in rh:
            print(f"    ours (collapse metrics only, {ours_c['analysis_s']:.2f} s, peak RSS "
                  f"{ours_c['peak_rss'] / MiB:.0f} MiB) / theirs: {rh['ratio_collapse_only']:.3f}")
        print("    their stages: " + "  ".join(f"{k}={v:.2f}" for k, v in th["stages_s"].items()))
        for k, e in th["errors"].items():
            print(f"    their {k} could not run: {e}")
        print("    agreement (|theirs - ours| / |ours|): " + "  ".join(f"{k}={v:.1e}" for k, v in
                                                                          rh.get("rel_diff", {}).items()))
        if th["metrics"].get("nc3_etf") is not None:
            print(f"    their NC3 (self_duality_error, a different quantity from our nc3): "
                  f"{th['metrics']['nc3_etf']:.4g}")


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=(*SHAPES, "all"), default="all")
    ap.add_argument("--quick", action="store_true", help="small shapes (a few minutes in all)")
    ap.add_argument("-C", type=int, default=None, help="classes (overrides the shape's; one shape only)")
    ap.add_argument("-d", type=int, default=None, help="feature dimension (overrides the shape's; one shape only)")
    ap.add_argument("-n", type=int, default=None, help="samples (overrides the shape's; one shape only)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    ap.add_argument("--tmpdir", default=None, help="where to put the temporary feature files")
    ap.add_argument("--threads", type=int, default=None, help="BLAS/OpenMP threads of the measured processes")
    ap.add_argument("--xtx-repeats", type=int, default=3, help="timed X^T X runs per case (median; default 3)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="analyses per case (the time is their median; peak RSS and the report are the first's)")
    ap.add_argument("--no-flat", action="store_true", help=f"skip the {FLAT_FACTOR}x-N memory-flatness runs")
    ap.add_argument("--rhubarbwu", type=Path, default=None,
                    help="folder holding an export of rhubarbwu/neural-collapse (its neural_collapse package) to "
                         "compare against on the lm shape (default: skip that comparison)")
    ap.add_argument("--rhubarbwu-batch", type=int, default=RHUB_BATCH, help="rows per accumulate() call of theirs")
    ap.add_argument("--rhubarbwu-tile", type=int, default=RHUB_TILE, help="tile_size of their tiled kernels")
    ap.add_argument("--child", choices=("ours", "rhubarbwu"), help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--needs", default="all", help=argparse.SUPPRESS)
    ap.add_argument("--collapse-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=RHUB_BATCH, help=argparse.SUPPRESS)
    ap.add_argument("--tile", type=int, default=RHUB_TILE, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child == "ours":
        print(json.dumps(child_ours(args.file, args.out, args.expect, args.needs, args.collapse_only,
                                    args.xtx_repeats, args.repeats)))
        return 0
    if args.child == "rhubarbwu":
        print(json.dumps(child_rhubarbwu(args.file, args.rhubarbwu, args.batch, args.tile)))
        return 0

    names = list(SHAPES) if args.shape == "all" else [args.shape]
    if (args.C or args.d or args.n) and len(names) > 1:
        ap.error("-C/-d/-n override one shape: pick it with --shape")
    shapes = []
    for name in names:
        s = SHAPES[name]
        if args.quick:
            s = replace(s, C=s.quick[0], d=s.quick[1], n=s.quick[2])
        shapes.append(replace(s, C=args.C or s.C, d=args.d or s.d, n=args.n or s.n))
    figures: dict = {"quick": args.quick, "threads": args.threads, "shapes": {}}
    tmp = Path(tempfile.mkdtemp(prefix="ncprobe-scale-", dir=args.tmpdir))
    try:
        for s in shapes:
            figures["shapes"][s.name] = bench_shape(s, tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures["machine"] = machine()
    print_tables(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"  figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
