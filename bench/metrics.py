"""Benchmark of the metric engine: ``analyze_file`` on a large random FeatureStore (N x 512 float32, 100 classes).

What it measures (the goals are the project's, not enforced here):

- time of the full metric suite (``nc_probe.analyze_file``: every metric, classifier W/b given, subspace metrics of
  all classes, the file's sha256) divided by the time of ONE float64 ``X^T X`` of the same N x d matrix, measured in
  the same process and run (goal <= 3). The baseline is computed chunk by chunk from the same file, as efficiently
  as we know how: each float32 chunk of 16384 rows is read into one reused buffer, cast into one reused float64
  buffer, and ``a.T @ a`` (numpy calls BLAS syrk) is accumulated. Printed against two baselines: ``xtx_file`` (the
  whole loop, with the reads and the cast, which the analysis has to do too) and ``xtx_blas`` (the syrk calls
  alone, stricter). Wall-clock and CPU-time ratios are both printed: on a shared machine the CPU time is steadier;
- throughput in samples/s, and the per-stage breakdown of ``report.timings`` (medians over repeats; pass 2 and the
  subspace metrics run concurrently, so the stages add up to more than the total);
- peak RSS of an analysis of N=100k and of N=N_full, each in its own fresh subprocess (``VmHWM`` of
  ``/proc/self/status``, falling back to ``ru_maxrss``), and their ratio (goal <= 1.1).

The features are written to disk first, chunk by chunk, with ``nc_probe.StoreWriter``: this process never holds all
of them. Files live in a temporary directory that is removed at the end. A freshly written file is usually in the
page cache, so reads are memory-speed for both the analysis and the baseline.

Usage::

    python -m bench.metrics --quick              # N = 200k (0.4 GB file)
    python -m bench.metrics                      # N = 1M (a 2 GB file)
    python -m bench.metrics --threads 1          # single-threaded BLAS/OpenMP: steadier on a shared machine
    python -m bench.metrics --json out.json      # also write the figures
    python -m bench.metrics --engine DIR         # measure the nc_probe package in DIR (e.g. an older version)

Each timing is the median of ``--repeats`` runs (baseline and analysis interleaved), since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DIM = 512
CLASSES = 100
N_FULL = 1_000_000
N_QUICK = 200_000
N_SMALL = 100_000
GEN_ROWS = 50_000  # rows per write
ENGINE = None  # --engine: folder of the nc_probe package the children import
BASELINE_ROWS = 16_384  # rows per chunk of the X^T X baseline (its fastest chunk size on the machines we tried)


# ---------------------------------------------------------------------------------------------- data
def make_file(path: Path, n: int, *, dim: int = DIM, classes: int = CLASSES, seed: int = 0, rank: int = 96) -> Path:
    """Write n random labelled features to ``path`` with StoreWriter, in chunks (never all in memory).

    Each class c has a mean ``mu_c`` (norm about 1) and a ``rank``-dimensional subspace ``B_c`` with decaying scales:
    ``h = mu_c + B_c g + 0.004 * noise``. Its unit features have rank_energy95 about 64 whatever N (from ~1000
    samples per class on), so quick and full runs do the same principal-angle work (k about 64 per class). Labels
    are uniform and unsorted. W and b are random (the model accuracy is chance; it is a benchmark, not a model).
    """
    from nc_probe import StoreWriter

    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim)).astype(np.float32) / np.float32(np.sqrt(dim))
    bases = np.linalg.qr(rng.standard_normal((classes, dim, rank)))[0].astype(np.float32)  # (C, d, r)
    scales = (np.linspace(1.5, 0.3, rank) / np.sqrt(rank)).astype(np.float32)
    W = rng.standard_normal((classes, dim)) / np.sqrt(dim)
    b = 0.1 * rng.standard_normal(classes)
    writer = StoreWriter(path, metadata={"layer": "bench-random", "seed": seed})
    try:
        for start in range(0, n, GEN_ROWS):
            m = min(GEN_ROWS, n - start)
            y = rng.integers(0, classes, m)
            h = 0.004 * rng.standard_normal((m, dim), dtype=np.float32)
            h += means[y]
            g = rng.standard_normal((m, rank), dtype=np.float32) * scales
            for c in range(classes):
                idx = np.flatnonzero(y == c)
                h[idx] += g[idx] @ bases[c].T
            writer.append(h, y)
        return writer.close(W=W, b=b)
    except BaseException:
        writer.abort()
        raise


# ---------------------------------------------------------------------------------------------- measurements
def peak_rss_bytes() -> int:
    """Peak resident set size of this process: VmHWM from /proc, else ru_maxrss (KiB on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def xtx_chunked(path: Path, rows: int = BASELINE_ROWS, engine: str = "numpy") -> dict:
    """One float64 X^T X of the file's features, chunk by chunk: each float32 chunk is read (plain file reads of the
    safetensors layout, independent of the engine under test) into one reused buffer, cast into one reused float64
    buffer, then ``a.T @ a`` is accumulated: by numpy (its BLAS's syrk, half the flops) or, ``engine="torch"``, by
    torch's matmul (the issue's yardstick; MKL gemm in the CPU wheel). Returns the loop time (wall and CPU) and the
    BLAS time alone."""
    import torch

    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        info = json.loads(f.read(hlen))["features"]
    if info["dtype"] != "F32":
        raise SystemExit(f"the baseline reads float32 features, the file has {info['dtype']}")
    n, d = info["shape"]
    offset = 8 + hlen + info["data_offsets"][0]
    acc = np.zeros((d, d))
    raw = bytearray(min(rows, n) * d * 4)
    buf = np.empty((min(rows, n), d))
    blas = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    with open(path, "rb", buffering=0) as f:
        for start in range(0, n, rows):
            m = min(rows, n - start)
            f.seek(offset + start * d * 4)
            view = memoryview(raw)[: m * d * 4]
            if f.readinto(view) != len(view):
                raise SystemExit(f"{path} is truncated")
            a = buf[:m]
            np.copyto(a, np.frombuffer(view, dtype="<f4").reshape(m, d))
            t = time.perf_counter()
            if engine == "torch":
                at = torch.from_numpy(a)
                acc += (at.T @ at).numpy()
            else:
                acc += a.T @ a  # numpy dispatches a.T @ a to BLAS syrk
            blas += time.perf_counter() - t
    return {"xtx_file": time.perf_counter() - t0, "xtx_file_cpu": time.process_time() - c0, "xtx_blas": blas,
            "checksum": float(np.trace(acc))}


def analyze(path: Path, chunk_rows: int | None = None, extras: bool = False) -> dict:
    """One ``analyze_file`` of the default metrics, or with ``extras`` the opt-in rules too (the linear probe, the
    Mahalanobis nearest class mean and the nearest-subspace rule: their phases in ``timings`` give each one's
    price)."""
    from nc_probe import analyze_file

    more = {"linear_probe": True, "mahalanobis": True, "nearest_subspace": True} if extras else {}
    t0, c0 = time.perf_counter(), time.process_time()
    report = analyze_file(path, chunk_rows=chunk_rows, **more)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = report.metrics
    return {"wall": wall, "cpu": cpu, "timings": dict(report.timings), "chunk_rows": report.settings["chunk_rows"],
            "summary": {k: m.get(k) for k in ("nc1", "nc4", "acc_model", "acc_ncc", "coding_rate",
                                              "rate_reduction", "angle_min_mean")},
            "rank_energy95_median": float(np.median(report.per_class["rank_energy95"]))}


def child(mode: str, path: Path, repeats: int, chunk_rows: int | None, extras: bool = False) -> dict:
    """Runs in a fresh subprocess. mode 'rss': one analysis, then the peak RSS. mode 'time': interleaved repeats."""
    import torch

    import nc_probe

    out = {"torch_threads": torch.get_num_threads(), "engine": os.path.dirname(nc_probe.__file__)}
    if mode == "rss":
        out["rss_before"] = peak_rss_bytes()
        out["analysis"] = analyze(path, chunk_rows)
        out["peak_rss"] = peak_rss_bytes()
        return out
    runs, bases, torch_bases = [], [], []
    xtx_chunked(path)  # warm-up: page cache, BLAS buffers
    xtx_chunked(path, engine="torch")
    for _ in range(repeats):
        bases.append(xtx_chunked(path))
        torch_bases.append(xtx_chunked(path, engine="torch"))
        runs.append(analyze(path, chunk_rows))
    out["baseline_runs"] = bases
    out["torch_baseline_runs"] = torch_bases
    if extras:
        out["extras_run"] = analyze(path, chunk_rows, extras=True)
    out["analysis_runs"] = runs
    return out


def run_child(mode: str, path: Path, repeats: int = 1, chunk_rows: int | None = None, threads: int | None = None,
              extras: bool = False):
    cmd = [sys.executable, "-m", "bench.metrics", "--child", mode, "--file", str(path), "--repeats", str(repeats)]
    if extras:
        cmd += ["--extras"]
    if ENGINE:
        cmd += ["--engine", ENGINE]
    if chunk_rows:
        cmd += ["--chunk-rows", str(chunk_rows)]
    env = dict(os.environ)
    if threads:
        env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"child {mode} failed with status {res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- main
def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"N={N_QUICK:,} instead of {N_FULL:,}")
    ap.add_argument("-n", type=int, default=None, help="number of samples of the timed run (overrides --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3)")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS comparison")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    ap.add_argument("--tmpdir", default=None, help="where to put the temporary feature files")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS/OpenMP threads of the measured processes (default: the libraries' own choice); "
                         "1 gives steadier figures on a shared machine")
    ap.add_argument("--chunk-rows", type=int, default=None, help="chunk_rows of the analysis (default: automatic)")
    ap.add_argument("--engine", type=Path, default=None,
                    help="folder holding another nc_probe package to measure instead (e.g. an older version, "
                         "exported with: git archive REV nc_probe | tar -x -C FOLDER)")
    ap.add_argument("--extras", action="store_true",
                    help="after the timed runs, one more analysis with the opt-in rules (--linear-probe, "
                         "--mahalanobis, --nearest-subspace): each rule's price as a multiple of X^T X")
    ap.add_argument("--child", choices=("rss", "time"), help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.engine:
        sys.path.insert(0, str(args.engine.resolve()))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(args.engine.resolve()), os.environ.get("PYTHONPATH", "")])
    if args.child:
        print(json.dumps(child(args.child, args.file, args.repeats or 1, args.chunk_rows, args.extras)))
        return 0

    global ENGINE
    ENGINE = str(args.engine.resolve()) if args.engine else None
    n = args.n or (N_QUICK if args.quick else N_FULL)
    repeats = args.repeats or 3
    tmp = Path(tempfile.mkdtemp(prefix="ncprobe-bench-", dir=args.tmpdir))
    try:
        t = time.perf_counter()
        big = make_file(tmp / f"feats_{n}.safetensors", n)
        gen_s = time.perf_counter() - t
        print(f"wrote {n:,} x {DIM} float32 features, C={CLASSES} ({big.stat().st_size / 2**30:.2f} GiB) "
              f"in {gen_s:.1f} s", file=sys.stderr)
        timed = run_child("time", big, repeats, args.chunk_rows, args.threads, args.extras)

        rss = None
        if not args.no_rss:
            small = make_file(tmp / f"feats_{N_SMALL}.safetensors", N_SMALL, seed=1)
            r_small = run_child("rss", small, 1, args.chunk_rows, args.threads)
            r_big = run_child("rss", big, 1, args.chunk_rows, args.threads)
            rss = {"n_small": N_SMALL, "n_big": n, "peak_rss_small": r_small["peak_rss"],
                   "peak_rss_big": r_big["peak_rss"], "rss_after_import_small": r_small["rss_before"],
                   "rss_after_import_big": r_big["rss_before"], "ratio": r_big["peak_rss"] / r_small["peak_rss"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    runs, bases = timed["analysis_runs"], timed["baseline_runs"]
    total = median([r["timings"]["total"] for r in runs])
    total_cpu = median([r["cpu"] for r in runs])
    xtx_file = median([b["xtx_file"] for b in bases])
    xtx_cpu = median([b["xtx_file_cpu"] for b in bases])
    xtx_blas = median([b["xtx_blas"] for b in bases])
    stages = {k: median([r["timings"][k] for r in runs]) for k in runs[0]["timings"]}
    # best of the repeats: the run least disturbed by a shared machine (the issue's figure), beside the medians
    best_total = min(r["timings"]["total"] for r in runs)
    best_cpu = min(r["cpu"] for r in runs)
    torch_runs = timed["torch_baseline_runs"]
    xtx_torch = min(b["xtx_file"] for b in torch_runs)
    xtx_torch_cpu = min(b["xtx_file_cpu"] for b in torch_runs)
    xtx_numpy_best = min(b["xtx_file"] for b in bases)
    figures = {
        "n": n, "d": DIM, "C": CLASSES, "repeats": repeats, "chunk_rows": runs[0]["chunk_rows"],
        "threads": args.threads, "baseline_rows": BASELINE_ROWS,
        "analysis_total_s": total, "analysis_total_runs_s": [r["timings"]["total"] for r in runs],
        "analysis_cpu_s": total_cpu, "analysis_cpu_runs_s": [r["cpu"] for r in runs],
        "xtx_file_s": xtx_file, "xtx_blas_s": xtx_blas, "xtx_file_cpu_s": xtx_cpu,
        "xtx_file_runs_s": [b["xtx_file"] for b in bases], "xtx_blas_runs_s": [b["xtx_blas"] for b in bases],
        "xtx_file_cpu_runs_s": [b["xtx_file_cpu"] for b in bases],
        "ratio_vs_xtx_file": total / xtx_file, "ratio_vs_xtx_blas": total / xtx_blas,
        "ratio_cpu_time": total_cpu / xtx_cpu,
        "samples_per_s": n / total, "stages_s": stages, "rss": rss,
        "best_of": {"analysis_s": best_total, "analysis_cpu_s": best_cpu, "xtx_torch_file_s": xtx_torch,
                    "xtx_torch_file_cpu_s": xtx_torch_cpu, "xtx_numpy_file_s": xtx_numpy_best,
                    "ratio_vs_xtx_torch": best_total / xtx_torch, "ratio_cpu_vs_xtx_torch": best_cpu / xtx_torch_cpu,
                    "ratio_vs_xtx_numpy": best_total / xtx_numpy_best},
        "result_summary": runs[-1]["summary"], "rank_energy95_median": runs[-1]["rank_energy95_median"],
        "engine": timed["engine"],
        "machine": {"cpus": os.cpu_count(), "torch_threads": timed["torch_threads"],
                    "python": platform.python_version(),
                    "numpy": np.__version__, "loadavg_end": os.getloadavg()},
    }

    thr = "library default" if not args.threads else str(args.threads)
    print(f"\nnc-probe metric benchmark: N={n:,} d={DIM} C={CLASSES}, chunk_rows={figures['chunk_rows']}, "
          f"threads={thr}, median of {repeats} (cpus={os.cpu_count()}, load {os.getloadavg()[0]:.1f})")
    print(f"  {'':<46}{'wall':>9}   {'ratio':>5}   {'CPU time':>9}   {'ratio':>5}")
    print(f"  {'full metric suite (analyze_file)':<46}{total:8.2f}s   {'':>5}   {total_cpu:8.2f}s")
    print(f"  {'X^T X float64, chunked from file (read+cast)':<46}{xtx_file:8.2f}s   {total / xtx_file:5.2f}   "
          f"{xtx_cpu:8.2f}s   {total_cpu / xtx_cpu:5.2f}   (goal <= 3)")
    print(f"  {'X^T X float64, BLAS syrk calls only':<46}{xtx_blas:8.2f}s   {total / xtx_blas:5.2f}")
    print(f"  best of {repeats}: analysis {best_total:.2f}s (CPU {best_cpu:.2f}s); X^T X float64 with torch, chunked "
          f"from file {xtx_torch:.2f}s (CPU {xtx_torch_cpu:.2f}s): ratio {best_total / xtx_torch:.2f} wall, "
          f"{best_cpu / xtx_torch_cpu:.2f} CPU (goal <= 3); vs numpy's syrk {best_total / xtx_numpy_best:.2f}")
    print(f"  throughput: {n / total:,.0f} samples/s")
    print("  stages (report.timings, wall):")
    for k, v in stages.items():
        if k != "total":  # "a/b": part of phase a, or work beside it on another thread
            name = k if "/" not in k else "  " + k.split("/", 1)[1]
            print(f"    {name:<44}{v:8.2f}s   {100 * v / total:5.1f} %   {v / xtx_torch:5.2f} x X^T X")
    extra = timed.get("extras_run")
    if extra:
        figures["extras_run"] = extra
        et = extra["timings"]
        parts = {"linear probe (pass 2 share)": et.get("pass2_nc4/linear_probe"),
                 "Mahalanobis (pass 2 share)": et.get("pass2_nc4/mahalanobis"),
                 "nearest subspace (its own pass)": et.get("nearest_subspace")}
        print(f"  with the opt-in rules: {et['total']:.2f}s = {et['total'] / xtx_torch:.2f} x X^T X (torch, best)")
        for name, v in parts.items():
            if v is not None:
                print(f"    {name:<44}{v:8.2f}s   {v / xtx_torch:5.2f} x X^T X")
    if rss:
        print(f"  peak RSS  N={N_SMALL:,}: {rss['peak_rss_small'] / 2**20:7.1f} MiB   N={n:,}: "
              f"{rss['peak_rss_big'] / 2**20:7.1f} MiB   ratio {rss['ratio']:.3f} (goal <= 1.1)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"  figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
