"""Side-by-side benchmark: nc-probe's collapse metrics vs rhubarbwu/neural-collapse, same features, same process.

The goal (from the issue): on the collapse metrics alone (``classes=[]``: no subspace metrics), float64, N = 200k,
d = 512, nc-probe takes at most half of rhubarbwu's time at C = 100 and at C = 1000.

For each C in ``--classes`` (default 100 and 1000) one float64 feature matrix H (N x d, class mean + isotropic noise,
balanced shuffled labels; W, b a partly collapsed classifier, as ``bench/scale.py`` draws them) is made in memory,
and, repeated ``--repeat`` times (interleaved; the best run of each counts):

- baseline: one torch float64 ``H^T H`` of the same features (``torch.from_numpy(H).mT @ ...``);
- rhubarbwu: their pipeline as their README and ``examples/mnist.py`` drive it, float64 on the CPU, in batches of
  ``--peer-batch`` rows (torch views of H, no copies): ``MeanAccumulator`` (pass 1); ``VarNormAccumulator`` +
  ``CovarAccumulator`` with the means (pass 2); ``DecAccumulator`` (pass 3; no FAISS index, their float64 NCC
  path); then their measure functions, each where nc-probe reports the same quantity:

  ======================  ======================================================================================
  nc-probe key            rhubarbwu
  ======================  ======================================================================================
  nc1                     ``covariance_ratio(covar_within, means, mG)`` (pinv)
  nc1_quot                ``covariance_ratio(covar_within, means, mG, "quotient")``
  nc1_cdnv                ``variability_cdnv(var_norms, means, tile_size=tile)``
  nc2_equinorm_M / _W     population std / mean of ``mean_norms(means, mG)`` / ``mean_norms(W)``
  nc2_etf_M / _W          ``simplex_etf_error(means, mG)`` / ``simplex_etf_error(W)``
  nc2_equiangle_*,        ``kernel_grid`` with a cosine kernel on their ``tiling`` (rows normalised by
  nc2_maxangle_*          ``kernel_grid``), reduced by their ``symm_reduce`` as ``kernel_stats`` does (their library
                          offers no cosine statistic directly; the mapping is ``bench/scale.py``'s)
  gnc2_log_mean / _var    ``kernel_stats(means, mG, kernel=log_kernel, tile_size=tile)``
  nc3_etf                 ``self_duality_error(W, means, mG)`` (their NC3; nc-probe's own ``nc3`` is another form)
  unc3                    ``similarities(W, means, mG, cos=True).var(unbiased=False)`` (their README's
                          ``nc3u_uni_dual`` line uses dot products and the unbiased variance; the cosine form
                          costs the same and is the quantity nc-probe reports)
  nc4                     ``1 - clf_ncc_agreement(dec)``; their linear rule is ``argmax W h`` (no bias), so the
                          bias is folded in exactly: a constant 1 appended to h, b to W and 1 to the means
  ======================  ======================================================================================

  Not timed, because nc-probe has no counterpart: ``nc1_svd`` (scipy ``svds`` with k = C-1, impossible when
  C > d), ``nc2g_dist`` (variance of the distance kernel) and NC5 (needs out-of-distribution data).
- nc-probe: ``nc_probe.analyze_features(H, y, W, b, classes=[], angle_classes=0)``: every collapse metric (and the
  other pass-1 metrics, NC4 and the accuracies), no subspace metric, no principal angle.

Printed per C: wall seconds and CPU seconds (each the best of the repeats; CPU time, all threads of the process, is
steadier on a shared machine), each as a multiple of the X^T X baseline's, the ratio nc-probe / rhubarbwu (goal
<= 0.5, on wall time), the stages of both (``report.timings`` for nc-probe), and the shared metrics side by side
with their relative difference (they are the same numbers: float64 vs float64, except their CDNV and kernel grids,
which their ``tiling`` stores in float32). The machine is named (CPU model from /proc/cpuinfo, torch and numpy BLAS).

Getting rhubarbwu/neural-collapse (imported at run time, never copied here; it needs scipy)::

    pip install git+https://github.com/rhubarbwu/neural-collapse.git
    # or, from a clone or an export, without installing:
    python -m bench.peer --peer-path /path/to/neural-collapse          # the folder holding neural_collapse/
    NC_PEER_PATH=/path/to/neural-collapse:/path/to/scipy-site python -m bench.peer

If it is not importable, the bench prints how to get it and exits 0.

Usage::

    python -m bench.peer                         # N = 200k, d = 512, C = 100 and 1000, best of 3
    python -m bench.peer --n 20000 --repeat 2    # a quick check
    python -m bench.peer --classes 100 --profile # also cProfile one nc-probe analysis (top functions)
    python -m bench.peer --engine DIR            # measure the nc_probe package in DIR (e.g. an exported revision)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PEER_BATCH = 2048  # rows per accumulate() call of theirs (their README leaves it to the data loader)
PEER_TILE = 128  # tile_size of their tiled kernels (their README's example uses 64)
GOAL = 0.5  # nc-probe / rhubarbwu
INSTALL_HINT = ("rhubarbwu/neural-collapse is not importable ({err}); get it with "
                "`pip install git+https://github.com/rhubarbwu/neural-collapse.git` (it needs scipy), or point "
                "--peer-path / NC_PEER_PATH at a folder holding its neural_collapse package; skipping the comparison")
KEYS = ("nc1", "nc1_quot", "nc1_cdnv", "nc2_equinorm_M", "nc2_equinorm_W", "nc2_etf_M", "nc2_etf_W",
        "nc2_equiangle_M", "nc2_equiangle_W", "nc2_maxangle_M", "nc2_maxangle_W", "gnc2_log_mean", "gnc2_log_var",
        "nc3_etf", "unc3", "nc4")


# ---------------------------------------------------------------------------------------------- data
def make_features(n: int, d: int, C: int, seed: int = 0, noise: float = 1.0):
    """float64 H (n x d) = class mean + isotropic noise of norm ``noise`` x the means', balanced shuffled labels;
    W = centred means + noise of 3x their norm, b small, so that NC4 is a few per cent, not 0 (``bench/scale.py``'s
    ``_classifier`` and ``_balanced_labels``)."""
    from bench.scale import _balanced_labels, _classifier

    model = np.random.default_rng(seed)
    data = np.random.default_rng([seed, n])
    means = model.standard_normal((C, d)) / np.sqrt(d)
    W, b = _classifier(model, means, 1.0, 3.0, 0.05 * model.standard_normal(C))
    y = _balanced_labels(data, n, C).astype(np.int64)
    H = data.standard_normal((n, d))
    H *= noise / np.sqrt(d)
    H += means[y]
    return H, y, W, b


# ---------------------------------------------------------------------------------------------- the peer
def import_peer(paths: list[str]):
    """rhubarbwu's modules, from an installed package or from ``paths`` (tried first). None (and the reason) when
    they cannot be imported."""
    for p in reversed(paths):
        if p and p not in sys.path:
            sys.path.insert(0, p)
    try:
        from neural_collapse import accumulate, kernels, measure, util
    except Exception as e:  # ImportError, or their module's own imports (scipy) failing
        return None, f"{e.__class__.__name__}: {e}"
    return (accumulate, kernels, measure, util), None


def run_peer(peer, H: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, batch: int, tile: int) -> dict:
    """rhubarbwu's collapse metrics of (H, y, W, b), float64 on the CPU (see the module docstring for the mapping).
    Returns the total and per-stage wall times and the metrics under nc-probe's keys."""
    import torch as pt

    accumulate, kernels, measure, util = peer
    f64 = pt.float64
    n, d = H.shape
    C = W.shape[0]
    Ht, yt = pt.from_numpy(H), pt.from_numpy(y)
    Wt, bt = pt.from_numpy(W), pt.from_numpy(b)
    stages: dict[str, float] = {}
    met: dict[str, float] = {}
    t_start, c_start = time.perf_counter(), time.process_time()
    t = t_start

    def lap(name: str):
        nonlocal t
        now = time.perf_counter()
        stages[name] = now - t
        t = now

    def batches():
        for s in range(0, n, batch):
            yield Ht[s:s + batch], yt[s:s + batch]

    mean_acc = accumulate.MeanAccumulator(C, d, "cpu", f64)
    for X, Y in batches():
        mean_acc.accumulate(X, Y)
    means, mG = mean_acc.compute()  # class means, the mean of the class means (nc-probe's global mean)
    lap("pass1_means")

    var_acc = accumulate.VarNormAccumulator(C, d, "cpu", f64, M=means)
    cov_acc = accumulate.CovarAccumulator(C, d, "cpu", f64, M=means)
    for X, Y in batches():
        var_acc.accumulate(X, Y, means)
        cov_acc.accumulate(X, Y, means)
    var_norms, _ = var_acc.compute()
    covar_within = cov_acc.compute()
    lap("pass2_varnorm_covar")

    M_aug = pt.cat([means, pt.ones(C, 1, dtype=f64)], 1)  # the 1s cancel in every distance
    W_aug = pt.cat([Wt, bt[:, None]], 1)  # argmax W_aug [h; 1] = argmax W h + b
    dec = accumulate.DecAccumulator(C, d + 1, "cpu", f64, M=M_aug, W=W_aug)
    ones = pt.ones(batch, 1, dtype=f64)
    for X, Y in batches():
        dec.accumulate(pt.cat([X, ones[:len(X)]], 1), Y, W_aug, M_aug)
    lap("pass3_decisions")

    met["nc4"] = 1 - measure.clf_ncc_agreement(dec)
    met["nc1"] = measure.covariance_ratio(covar_within, means, mG)
    met["nc1_quot"] = measure.covariance_ratio(covar_within, means, mG, "quotient")
    lap("nc1_nc4")

    def equinorm(norms):
        return float(norms.std(unbiased=False) / norms.mean())

    met["nc2_equinorm_M"] = equinorm(measure.mean_norms(means, mG))
    met["nc2_equinorm_W"] = equinorm(measure.mean_norms(Wt))
    met["nc2_etf_M"] = measure.simplex_etf_error(means, mG)
    met["nc2_etf_W"] = measure.simplex_etf_error(Wt)
    met["nc3_etf"] = measure.self_duality_error(Wt, means, mG)
    met["unc3"] = float(measure.similarities(Wt, means, mG, cos=True).var(unbiased=False))
    lap("nc2_norms_etf_nc3")

    def cosine_kernel(data, tile_size=None):
        return util.tiling(data, lambda a, c: a @ c.mT, tile_size)

    for key, vectors, centre in (("M", means, mG), ("W", Wt, 0)):
        grid = kernels.kernel_grid(vectors, centre, cosine_kernel, tile)
        avg = util.symm_reduce(grid)
        met[f"nc2_equiangle_{key}"] = float(util.symm_reduce(grid, lambda row, a=avg: pt.sum((row - a) ** 2))) ** 0.5
        met[f"nc2_maxangle_{key}"] = float(util.symm_reduce(grid, lambda row: pt.sum(pt.abs(row + 1.0 / (C - 1)))))
    lap("nc2_angles")
    met["gnc2_log_mean"], met["gnc2_log_var"] = kernels.kernel_stats(means, mG, kernel=kernels.log_kernel,
                                                                     tile_size=tile)
    lap("gnc2_log")
    met["nc1_cdnv"] = measure.variability_cdnv(var_norms, means, tile_size=tile)
    lap("nc1_cdnv")
    return {"total_s": time.perf_counter() - t_start, "cpu_s": time.process_time() - c_start, "stages_s": stages,
            "metrics": met}


# ---------------------------------------------------------------------------------------------- nc-probe, baseline
def run_ours(H, y, W, b) -> dict:
    import nc_probe

    t0, c0 = time.perf_counter(), time.process_time()
    report = nc_probe.analyze_features(H, y, W, b, classes=[], angle_classes=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"total_s": wall, "cpu_s": cpu, "timings": dict(report.timings), "metrics": dict(report.metrics)}


def xtx(Ht) -> dict:
    t, c = time.perf_counter(), time.process_time()
    G = Ht.mT @ Ht
    out = {"total_s": time.perf_counter() - t, "cpu_s": time.process_time() - c}
    del G
    return out


def profile_ours(H, y, W, b, top: int) -> str:
    import cProfile
    import io
    import pstats

    import nc_probe

    prof = cProfile.Profile()
    prof.enable()
    report = nc_probe.analyze_features(H, y, W, b, classes=[], angle_classes=0)
    prof.disable()
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return ("report.timings: " + "  ".join(f"{k}={v:.3f}" for k, v in report.timings.items()) + "\n"
            + s.getvalue())


# ---------------------------------------------------------------------------------------------- machine
def machine() -> dict:
    import torch

    from bench.scale import machine as base

    out = base()
    cfg = torch.__config__.show()
    found = re.search(r"BLAS_INFO=([^,\s]+)", cfg)
    out["torch_blas"] = found.group(1) if found else "?"
    out["torch_threads"] = torch.get_num_threads()
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        out["numpy_blas"] = f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # older numpy: no mode="dicts"
        out["numpy_blas"] = "?"
    return out


def _num(v) -> str:
    return f"{v:16.8g}" if v is not None else f"{'-':>16}"


def rel(a, b) -> float:
    if a is None or b is None:
        return float("nan")
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


# ---------------------------------------------------------------------------------------------- main
def bench_one(C: int, args, peer) -> dict:
    import torch

    t = time.perf_counter()
    H, y, W, b = make_features(args.n, args.d, C, seed=args.seed)
    print(f"C={C}: made N={args.n:,} x d={args.d} float64 features in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)
    Ht = torch.from_numpy(H)
    xtx(Ht)  # warm-up: BLAS buffers, threads
    runs: dict[str, list] = {"xtx": [], "peer": [], "ours": []}
    for i in range(args.repeat):
        runs["xtx"].append(xtx(Ht))
        runs["peer"].append(run_peer(peer, H, y, W, b, args.peer_batch, args.peer_tile))
        gc.collect()
        runs["ours"].append(run_ours(H, y, W, b))
        gc.collect()
        print(f"  repeat {i + 1}/{args.repeat}: X^T X {runs['xtx'][-1]['total_s']:.3f} s, rhubarbwu "
              f"{runs['peer'][-1]['total_s']:.2f} s, nc-probe {runs['ours'][-1]['total_s']:.2f} s", file=sys.stderr)
    best_peer = min(runs["peer"], key=lambda r: r["total_s"])
    best_ours = min(runs["ours"], key=lambda r: r["total_s"])
    ours_m, peer_m = best_ours["metrics"], best_peer["metrics"]
    out = {"C": C, "n": args.n, "d": args.d, "peer_stages_s": best_peer["stages_s"],
           "ours_timings": best_ours["timings"], "ratio": best_ours["total_s"] / best_peer["total_s"]}
    for key in ("xtx", "peer", "ours"):  # best wall and best CPU time (steadier on a shared machine) of each
        out[f"{key}_s"] = min(r["total_s"] for r in runs[key])
        out[f"{key}_cpu_s"] = min(r["cpu_s"] for r in runs[key])
        out[f"{key}_runs_s"] = [r["total_s"] for r in runs[key]]
        out[f"{key}_cpu_runs_s"] = [r["cpu_s"] for r in runs[key]]
    out["ratio_cpu"] = out["ours_cpu_s"] / out["peer_cpu_s"]
    out.update({
           "metrics": {k: {"nc_probe": ours_m.get(k), "rhubarbwu": peer_m.get(k),
                           "rel_diff": rel(ours_m.get(k), peer_m.get(k))} for k in KEYS}})
    if args.profile:
        out["profile"] = profile_ours(H, y, W, b, args.profile_top)
    return out


def print_tables(figures: dict) -> None:
    mc = figures["machine"]
    print(f"\nnc-probe vs rhubarbwu/neural-collapse, collapse metrics only (classes=[]), float64, same features, same "
          f"process; best of {figures['repeat']}")
    print(f"machine: {mc['cpu']}, {mc['cpus']} CPUs (affinity {mc['affinity']}), torch {mc['torch']} "
          f"(BLAS {mc['torch_blas']}, {mc['torch_threads']} threads), numpy {mc['numpy']} (BLAS {mc['numpy_blas']}), "
          f"Python {mc['python']}, load {mc['loadavg_end'][0]:.1f}")
    print(f"rhubarbwu: {figures['peer_module']}, batch {figures['peer_batch']}, tile {figures['peer_tile']}; "
          f"nc-probe: {figures['engine']}")
    for r in figures["cases"]:
        print(f"\nN={r['n']:,} d={r['d']} C={r['C']}")
        print(f"  {'':<40}{'wall s':>9}{'x X^T X':>9}{'CPU s':>9}{'x X^T X':>9}")
        for key, name in (("xtx", "torch float64 X^T X (baseline)"), ("peer", "rhubarbwu (accumulators + measures)"),
                          ("ours", "nc-probe analyze_features(classes=[])")):
            print(f"  {name:<40}{r[f'{key}_s']:9.3f}{r[f'{key}_s'] / r['xtx_s']:9.2f}"
                  f"{r[f'{key}_cpu_s']:9.3f}{r[f'{key}_cpu_s'] / r['xtx_cpu_s']:9.2f}")
        ok = "ok" if r["ratio"] <= GOAL else "OVER"
        print(f"  nc-probe / rhubarbwu = {r['ratio']:.3f} wall  {ok} (goal <= {GOAL}); {r['ratio_cpu']:.3f} CPU time")
        print("  rhubarbwu stages: " + "  ".join(f"{k}={v:.3f}" for k, v in r["peer_stages_s"].items()))
        print("  nc-probe report.timings: " + "  ".join(f"{k}={v:.3f}" for k, v in r["ours_timings"].items()))
        print(f"  {'metric':<18}{'nc-probe':>16}{'rhubarbwu':>16}{'rel diff':>10}")
        for k, m in r["metrics"].items():
            print(f"  {k:<18}{_num(m['nc_probe'])}{_num(m['rhubarbwu'])}{m['rel_diff']:10.1e}")
        if r.get("profile"):
            print(f"  cProfile of one nc-probe analysis at C={r['C']}:\n{r['profile']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="samples (default 200000)")
    ap.add_argument("--d", type=int, default=512, help="feature dimension (default 512)")
    ap.add_argument("--classes", type=int, nargs="+", default=[100, 1000], help="values of C (default 100 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each (the best counts; default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peer-path", default=os.environ.get("NC_PEER_PATH", ""),
                    help="folder(s) (os.pathsep-separated) holding rhubarbwu's neural_collapse package and, if not "
                         "installed, scipy; default $NC_PEER_PATH, else an installed neural_collapse")
    ap.add_argument("--peer-batch", type=int, default=PEER_BATCH, help="rows per accumulate() call of theirs")
    ap.add_argument("--peer-tile", type=int, default=PEER_TILE, help="tile_size of their tiled kernels")
    ap.add_argument("--engine", type=Path, default=None,
                    help="folder holding another nc_probe package to measure instead (e.g. exported with "
                         "git archive REV nc_probe | tar -x -C FOLDER)")
    ap.add_argument("--profile", action="store_true", help="also cProfile one nc-probe analysis per C")
    ap.add_argument("--profile-top", type=int, default=25, help="functions listed by --profile")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    if args.engine:
        sys.path.insert(0, str(args.engine.resolve()))
    peer, err = import_peer([p for p in args.peer_path.split(os.pathsep) if p])
    if peer is None:
        print(INSTALL_HINT.format(err=err))
        return 0
    import nc_probe

    figures: dict = {"repeat": args.repeat, "peer_batch": args.peer_batch, "peer_tile": args.peer_tile,
                     "peer_module": str(Path(peer[0].__file__).parent), "engine": str(Path(nc_probe.__file__).parent),
                     "cases": []}
    for C in args.classes:
        figures["cases"].append(bench_one(C, args, peer))
    figures["machine"] = machine()
    print_tables(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
