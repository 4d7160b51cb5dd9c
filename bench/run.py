"""The benchmark suite in one command: ``python -m bench`` (or ``python bench/run.py``), ``--quick`` for a short run.

Every figure is a ratio of two timings measured in this same run on this same machine, so the table means the same
on a laptop and a server:

- full metric suite vs one float64 X^T X of the same features (``bench/metrics.py``; goal <= 3);
- nc-probe vs a per-sample-loop NC1-NC4 in the style of the published reference scripts (``bench/naive.py``;
  goal >= 20x faster, both on the same in-memory features, nc-probe computing every metric, the loop only NC1-NC4);
- extraction + statistics vs a bare forward loop over the same batches (``bench/extract.py``; goal <= 1.05);
- peak RSS at N=1M vs N=100k (``bench/metrics.py``; goal <= 1.1);
- 2 torchrun processes vs 1 process on the same feature file (wall time; on a 2-core machine expect ~1);
- the field's shapes (``bench/scale.py``: ImageNet-1k/ResNet-50, a 32k-token LM head, a full-rank 1000-class layer):
  analysis vs one float64 X^T X (goals <= 20 and <= 60), peak RSS at 5x N vs N (goal <= 1.1), and, with
  ``--rhubarbwu DIR``, nc-probe vs rhubarbwu/neural-collapse computing the same collapse metrics. The full shapes
  take a while (the LM head most); ``--no-scale`` skips them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _module(name: str, *args: str, env=None) -> dict:
    """Run ``python -m bench.NAME ... --json F`` in a fresh process and return its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}", *args, "--json", str(out)], cwd=ROOT,
                              env=env, text=True, capture_output=True)
        if proc.returncode != 0:
            raise SystemExit(f"bench.{name} failed:\n{proc.stderr[-2000:]}")
        print(proc.stdout.rstrip(), file=sys.stderr)
        return json.loads(out.read_text())


def naive_vs_ncprobe(n: int, d: int = 512, C: int = 10, seed: int = 0) -> dict:
    import nc_probe
    from bench.naive import naive_nc

    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    H = rng.normal(size=(C, d))[y] * 3 + rng.normal(size=(n, d))
    W, b = rng.normal(size=(C, d)), rng.normal(size=C)
    t = time.perf_counter()
    ref = naive_nc(H, y, W, b)
    t_naive = time.perf_counter() - t
    t = time.perf_counter()
    report = nc_probe.analyze_features(H, y, W, b)
    t_ours = time.perf_counter() - t
    agree = max(abs(report.metrics[k] - v) / max(abs(v), 1e-12) for k, v in ref.items())
    return {"n": n, "d": d, "C": C, "naive_s": t_naive, "ncprobe_s": t_ours, "speedup": t_naive / t_ours,
            "max_rel_diff": agree}


def processes(n: int, d: int = 256, C: int = 50) -> dict:
    import nc_probe

    rng = np.random.default_rng(1)
    y = rng.integers(0, C, n)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "feats.safetensors"
        w = nc_probe.StoreWriter(path)
        for start in range(0, n, 50_000):
            m = min(50_000, n - start)
            yy = y[start:start + m]
            w.append((rng.normal(size=(C, d))[yy] + rng.normal(size=(m, d))).astype(np.float32), yy)
        w.close(W=rng.normal(size=(C, d)), b=np.zeros(C))
        times = {}
        for k in (1, 2):
            cmd = [sys.executable, "-m", "nc_probe", "analyze", str(path), "-q", "--json", f"{tmp}/r{k}.json"]
            if k > 1:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}",
                       "-m", "nc_probe", *cmd[3:]]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // k))}
            t = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True)
            times[k] = time.perf_counter() - t
        r1 = json.loads(Path(f"{tmp}/r1.json").read_text())["metrics"]
        r2 = json.loads(Path(f"{tmp}/r2.json").read_text())["metrics"]
    diff = max(abs(r2[k] - v) / max(abs(v), 1e-12) for k, v in r1.items() if v is not None)
    return {"n": n, "d": d, "C": C, "one_s": times[1], "two_s": times[2], "ratio": times[2] / times[1],
            "max_rel_diff": diff}


def scale_rows(sc: dict) -> list[tuple[str, str, str, str]]:
    """The suite's rows of ``bench/scale.py``'s figures."""
    rows = []
    for name, s in sc["shapes"].items():
        r, goals = s["cases"].get(name, {}), s["goals"]
        if "failed" in r:
            rows.append((f"scale {name}: analysis", "FAILED", "", f"status {r['failed']}"))
            continue
        ck = r["check"]
        rss_goal = f" (goal <= {goals['rss'] / 2**30:.0f} GiB)" if goals["rss"] else ""
        json_goal = f" (goal <= {goals['json'] / 2**20:.0f} MiB)" if goals["json"] else ""
        details = (f"N={s['n']:,} d={s['d']} C={ck['expected_classes']:,}, {r['analysis_s']:.1f} s, peak RSS "
                   f"{r['peak_rss'] / 2**20:.0f} MiB{rss_goal}, JSON {r['json_bytes'] / 2**20:.1f} MiB{json_goal}, "
                   f"{'complete' if ck['complete'] else 'INCOMPLETE'}")
        ratio = f"{r['ratio_vs_xtx']:.1f}" if r.get("ratio_vs_xtx") else "-"
        rows.append((f"scale {name}: analysis / float64 X^T X", ratio,
                     f"<= {goals['xtx']:g}" if goals["xtx"] else "", details))
        flat = s.get("flat")
        if flat and flat.get("ratio") is not None:
            rows.append((f"scale {name}: peak RSS N=5x / N", f"{flat['ratio']:.3f}", f"<= {goals['flat']:g}",
                         f"{flat['peak_rss_small'] / 2**20:.0f} vs {flat['peak_rss_big'] / 2**20:.0f} MiB at "
                         f"N={flat['n_big']:,}"))
        rh = s.get("rhubarbwu")
        if rh and "ratio_collapse_only" in rh:
            agree = max(rh["rel_diff"].values(), default=float("nan"))
            rows.append((f"scale {name}: nc-probe collapse / rhubarbwu", f"{rh['ratio_collapse_only']:.2f}", "",
                         f"every metric / rhubarbwu: {rh.get('ratio_all_metrics', float('nan')):.2f}, "
                         f"values agree to {agree:.0e}"))
        elif rh:
            rows.append((f"scale {name}: nc-probe / rhubarbwu", "-", "",
                         rh.get("skipped") or f"their run failed: status {rh['theirs'].get('failed')}"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    ap.add_argument("--json", type=Path, help="write all figures here")
    ap.add_argument("--no-scale", action="store_true", help="skip the field-scale shapes (bench/scale.py)")
    ap.add_argument("--rhubarbwu", type=Path, default=None,
                    help="export of rhubarbwu/neural-collapse for bench/scale.py's comparison (default: skipped)")
    args = ap.parse_args(argv)
    quick = ["--quick"] if args.quick else []
    rows, figures = [], {}

    m = figures["metrics"] = _module("metrics", *quick)
    rows.append(("full metric suite / float64 X^T X", f"{m['ratio_vs_xtx_file']:.2f}", "<= 3",
                 f"N={m['n']:,} d={m['d']} C={m['C']}, {m['samples_per_s']:,.0f} samples/s"))
    nv = figures["naive"] = naive_vs_ncprobe(20_000 if args.quick else 50_000)
    rows.append(("per-sample-loop NC1-NC4 / nc-probe (all metrics)", f"{nv['speedup']:.0f}x", ">= 20x",
                 f"N={nv['n']:,} d={nv['d']} C={nv['C']}, agree to {nv['max_rel_diff']:.0e}"))
    e = figures["extract"] = _module("extract", *quick)
    rows.append(("extraction + stats / bare forward", f"{e['ratio']:.3f}", "<= 1.05",
                 f"{e['ncprobe_images_per_s']:,.0f} images/s, batch {e['batch_size']}"))
    if m.get("rss"):
        r = m["rss"]
        rows.append(("peak RSS N=big / N=100k", f"{r['ratio']:.3f}", "<= 1.1",
                     f"{r['peak_rss_small'] / 2**20:.0f} vs {r['peak_rss_big'] / 2**20:.0f} MiB at N={r['n_big']:,}"))
    p = figures["processes"] = processes(100_000 if args.quick else 400_000)
    rows.append(("2 torchrun processes / 1 process", f"{p['ratio']:.2f}", "",
                 f"N={p['n']:,} d={p['d']} C={p['C']}, reports agree to {p['max_rel_diff']:.0e}"))

    if not args.no_scale:
        extra = ["--rhubarbwu", str(args.rhubarbwu.resolve())] if args.rhubarbwu else []
        sc = figures["scale"] = _module("scale", "--shape", "all", *quick, *extra)
        rows.extend(scale_rows(sc))

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    figures["machine"] = machine
    print(f"\nnc-probe benchmark suite ({'quick' if args.quick else 'full'}) on {machine}")
    width = max(len(r[0]) for r in rows)
    print(f"  {'measure':<{width}}  {'ratio':>7}  {'goal':>7}  details")
    for name, ratio, goal, details in rows:
        print(f"  {name:<{width}}  {ratio:>7}  {goal:>7}  {details}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
