"""Token-level heads (50k-256k classes, few of them present in a sample): statistics sparse in the classes seen,
W never copied whole in float64, the nearest class mean and the class-pair sweeps planned by their cost
(``docs/metrics.md``, "Many classes"). Each route is checked against a direct numpy computation or against the same
data relabelled 0..K-1, with tiny limits and blocks so that the large-head code paths run at test sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_properties import assert_close, two_pass_stats

import nc_probe
from nc_probe import ClassStats
from nc_probe.analysis import from_stats as compute
from nc_probe.analysis import subspace_report
from nc_probe.metrics import blockwise
from nc_probe.stats import predictions, workplan
from nc_probe.stats.moment_plan import subspace_bytes

REPO = Path(__file__).resolve().parent.parent
RTOL = 1e-9
# metrics that read W's rows of classes without samples (every row of the head), or its argmax over all of them
ABSENT_ROWS = {"bias_collapse", "acc_model", "nc4"}


def scattered(seed: int, C: int, K: int, d: int, n: int, *, zipf: float = 1.1, offset: float = 0.0):
    """``n`` rows of ``K`` classes whose ids are scattered over ``0..C-1``, Zipf-distributed (class mean + noise)."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(C, K, replace=False))
    p = np.arange(1, K + 1, dtype=np.float64) ** -zipf
    pos = rng.choice(K, n, p=p / p.sum())
    pos[:K] = np.arange(K)  # every class present
    rng.shuffle(pos)
    means = 3 * rng.normal(size=(K, d)) + offset
    H = means[pos] + rng.normal(size=(n, d))
    return ids, pos, H


def reference(H, y):
    """Per present class (ascending): ids, counts, means, m2; the pooled scatter; two-pass numpy."""
    classes = np.unique(y)
    ref = two_pass_stats(H, np.searchsorted(classes, y), len(classes), [])
    return classes, ref


# ---------------------------------------------------------------------------------------------- ClassStats
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_sparse_statistics_equal_the_dense_ones_at_a_million_classes(backend):
    """50 classes scattered over C = 10^6, in batches whose classes arrive out of order (rows grow, then are put in
    class order): the statistics of the classes seen equal two-pass numpy and the dense statistics of the same
    rows relabelled 0..49; no per-class row exists for the other 999,950 classes."""
    C, d = 10**6, 7
    ids, pos, H = scattered(0, C, 50, d, 3000, offset=100.0)
    y = ids[pos]
    stats = ClassStats(C, d, backend=backend)
    for s in range(0, len(y), 211):
        stats.update(torch.from_numpy(H[s:s + 211]), torch.from_numpy(y[s:s + 211]))
    assert stats._rows.capacity < 100 and stats.total == len(y)
    classes, ref = reference(H, y)
    np.testing.assert_array_equal(stats.class_ids, classes)
    np.testing.assert_array_equal(stats.class_count.numpy(), ref["count"])
    for name, key in (("class_mean", "mean"), ("class_m2", "m2")):
        np.testing.assert_allclose(getattr(stats, name).numpy(), ref[key], rtol=RTOL, atol=RTOL * 100)
    scale = np.abs(ref["scatter"]).max()
    np.testing.assert_allclose(stats.scatter.numpy(), ref["scatter"], rtol=RTOL, atol=RTOL * scale)
    dense = ClassStats(50, d, backend=backend).update(torch.from_numpy(H), torch.from_numpy(pos))
    for name in ("count", "mean", "m2", "zero_norm"):
        np.testing.assert_allclose(getattr(stats, f"class_{name}").numpy(), getattr(dense, name).numpy(),
                                   rtol=RTOL, atol=1e-9, err_msg=name)
    np.testing.assert_allclose(stats._rows.zz.numpy(), dense.zz.numpy(), rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(stats.second_moment_total().numpy(), dense.second_moment_total().numpy(), rtol=RTOL)


def test_classes_known_up_front_are_allocated_once_in_order():
    C, d = 10**6, 4
    ids, pos, H = scattered(1, C, 30, d, 500)
    y = ids[pos]
    known = ClassStats(C, d, classes=ids, subspace_classes=[])
    rows = known._rows
    tensors = rows.mean
    known.update(H, y)
    assert known._rows.mean is tensors and rows.in_order  # no growth, no reordering
    grown = ClassStats(C, d, subspace_classes=[]).update(H[::-1].copy(), y[::-1].copy())
    np.testing.assert_allclose(known.class_mean.numpy(), grown.class_mean.numpy(), rtol=RTOL)


def test_merging_statistics_of_disjoint_and_overlapping_classes():
    C, d = 10**6, 5
    ids, pos, H = scattered(2, C, 40, d, 2000, offset=1e3)
    y = ids[pos]
    tracked = ids[::7].tolist()
    whole = ClassStats(C, d, subspace_classes=tracked).update(H, y)
    first = np.isin(y, ids[:20])  # classes 0..19 here, 20..39 there: disjoint
    a = ClassStats(C, d, subspace_classes=tracked).update(H[first], y[first])
    b = ClassStats(C, d, subspace_classes=tracked).update(H[~first], y[~first])
    a.merge(b)
    half = np.arange(len(y)) % 2 == 0  # every class on both sides
    c = ClassStats(C, d, subspace_classes=tracked).update(H[half], y[half])
    c.merge(ClassStats(C, d, subspace_classes=tracked).update(H[~half], y[~half]))
    for merged in (a, c):
        np.testing.assert_array_equal(merged.class_ids, whole.class_ids)
        for name in ("class_count", "class_mean", "class_m2", "scatter", "zz", "zz_total"):
            want = getattr(whole, name).numpy()
            np.testing.assert_allclose(getattr(merged, name).numpy(), want, rtol=RTOL,
                                       atol=RTOL * max(1.0, np.abs(want).max()), err_msg=name)


def test_all_reduce_under_torchrun_when_ranks_see_different_classes(tmp_path):
    """Two gloo ranks hold rows of different classes (some shared, some on one rank only, one rank none of a class
    the other has): all_reduce gives every rank the single-process statistics of all rows, rows for the union of
    the classes in class order."""
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import numpy as np, torch, torch.distributed as dist
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_many_classes import scattered
        from nc_probe import ClassStats
        from nc_probe.core import distributed
        distributed.init_from_env("cpu")
        rank = dist.get_rank()
        ids, pos, H = scattered(3, 10**6, 30, 6, 1500, offset=50.0)
        y = ids[pos]
        mine = (pos < 20) if rank == 0 else (pos >= 12)  # classes 12..19 on both ranks
        mine &= (np.arange(len(y)) % 2 == rank) | (pos < 12) | (pos >= 20)
        for backend in ("auto", "torch"):
            s = ClassStats(10**6, 6, backend=backend).update(H[mine], y[mine])
            s.all_reduce()
            out = {{k: getattr(s, k).numpy() for k in ("class_count", "class_mean", "class_m2", "scatter")}}
            out["zz"] = s._rows.zz.numpy()
            np.savez(sys.argv[1] + f"-{{backend}}-{{rank}}.npz", ids=s.class_ids, **out)
        dist.barrier()  # both ranks tear down together (gloo can abort a rank that exits first: test_callbacks.py)
        dist.destroy_process_group()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "out")], capture_output=True, text=True, timeout=240, env=env,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids, pos, H = scattered(3, 10**6, 30, 6, 1500, offset=50.0)
    y = ids[pos]
    mine0 = (pos < 20) & ((np.arange(len(y)) % 2 == 0) | (pos < 12))
    mine1 = (pos >= 12) & ((np.arange(len(y)) % 2 == 1) | (pos >= 20))
    assert np.all(mine0 | mine1) and not np.any(mine0 & mine1)
    single = ClassStats(10**6, 6).update(H, y)
    for backend in ("auto", "torch"):
        for rank in (0, 1):
            got = np.load(tmp_path / f"out-{backend}-{rank}.npz")
            np.testing.assert_array_equal(got["ids"], ids)
            for name in ("class_count", "class_mean", "class_m2", "scatter"):
                want = getattr(single, name).numpy()
                np.testing.assert_allclose(got[name], want, rtol=RTOL, atol=RTOL * max(1, np.abs(want).max()),
                                           err_msg=name)
            np.testing.assert_allclose(got["zz"], single._rows.zz.numpy(), rtol=RTOL, atol=1e-9)


# ---------------------------------------------------------------------------------------------- reports
def _head(seed: int, C: int, K: int, d: int, n: int):
    """Features of K classes scattered over a C-way head, W (C x d, float32) aligned with their means for the
    classes present and random elsewhere, b, and the model's predictions: mostly right, some a class without
    samples, some another present class."""
    ids, pos, H = scattered(seed, C, K, d, n)
    rng = np.random.default_rng(seed + 1)
    means = np.stack([H[pos == k].mean(0) for k in range(K)])
    W = (0.3 * rng.normal(size=(C, d))).astype(np.float32)
    W[ids] = (means - means.mean(0) + 0.5 * rng.normal(size=(K, d))).astype(np.float32)
    b = (0.1 * rng.normal(size=C)).astype(np.float32)
    y = ids[pos]
    pred = y.copy()
    absent = np.setdiff1d(np.arange(C), ids)
    wrong = rng.random(n)
    pred[wrong < 0.2] = rng.choice(absent, int(np.sum(wrong < 0.2)))
    other = (wrong >= 0.2) & (wrong < 0.35)
    pred[other] = ids[rng.integers(0, K, int(other.sum()))]
    return ids, pos, H.astype(np.float32), W, b, pred


def _ncc(H, pos, means):
    """Nearest class mean (float64, ties to the lower position) of every row."""
    D = np.square(H.astype(np.float64)[:, None, :] - means[None]).sum(2)
    return np.argmin(D, axis=1)


def test_a_300k_way_head_with_few_classes_present_gives_the_relabelled_report(tmp_path):
    """C = 300k, 12 classes present: every metric equals the report of the same rows relabelled 0..11 with W's 12
    rows, except those that read the other rows; those equal a direct numpy computation (predictions of a class
    without samples are wrong, and disagree with the nearest class mean)."""
    C, K, d = 300_000, 12, 10
    ids, pos, H, W, b, pred = _head(4, C, K, d, 1500)
    y = ids[pos]
    path = nc_probe.write_store(tmp_path / "head.safetensors", H, y, predictions=pred, W=W, b=b)
    report = nc_probe.analyze_file(path)
    small = nc_probe.analyze_features(H, pos, W[ids], b[ids])
    assert report.inputs["class_ids"] == ids.tolist() and report.inputs["num_labels"] == C
    assert report.settings["frequent_classes"] is None
    assert_close({k: v for k, v in small.metrics.items() if k not in ABSENT_ROWS},
                 {k: v for k, v in report.metrics.items() if k not in ABSENT_ROWS}, "metrics", RTOL)
    skip = {"class_ids", "acc_model", "pca2d", "subspace_class_ids", "mean_cosine"}
    assert_close({k: v for k, v in small.per_class.items() if k not in skip},
                 {k: v for k, v in report.per_class.items() if k not in skip}, "per_class", RTOL)
    np.testing.assert_allclose(report.angles["angle_min"], small.angles["angle_min"], rtol=1e-9, atol=1e-9)
    means = np.stack([H[pos == k].astype(np.float64).mean(0) for k in range(K)])
    ncc = ids[_ncc(H, pos, means)]
    m = report.metrics
    assert m["acc_model"] == pytest.approx(np.mean(pred == y), rel=1e-12)
    assert m["nc4"] == pytest.approx(np.mean(pred != ncc), rel=1e-12)
    assert m["acc_ncc"] == pytest.approx(np.mean(ncc == y), rel=1e-12)
    mu_G = means.mean(0)
    direct = np.linalg.norm(W.astype(np.float64) @ mu_G + b.astype(np.float64))
    assert m["bias_collapse"] == pytest.approx(direct, rel=1e-9)
    per = report.per_class["acc_model"]
    assert per == pytest.approx([np.mean(pred[pos == k] == ids[k]) for k in range(K)], rel=1e-12)


def test_the_head_is_scored_in_blocks_of_rows_as_float64_would(monkeypatch):
    """Without stored predictions, acc_model and nc4 take the argmax over every row of a 20k-way head (float32 W,
    screened in float32, a block of rows at a time), the same decisions as float64 over all rows at once."""
    C, K, d = 20_000, 9, 6
    ids, pos, H, W, b, _ = _head(5, C, K, d, 800)
    y = ids[pos]
    monkeypatch.setattr(predictions, "WHOLE_BYTES", 0)
    monkeypatch.setattr(predictions, "BLOCK_BYTES", 8 * d * 777)  # 777 rows a block: the last one is short
    report = nc_probe.analyze_features(H, y, W, b)
    torch_path = nc_probe.analyze_features(H, y, W, b, backend="torch")
    model = np.argmax(H.astype(np.float64) @ W.astype(np.float64).T + b.astype(np.float64), axis=1)
    means = np.stack([H[pos == k].astype(np.float64).mean(0) for k in range(K)])
    ncc = ids[_ncc(H, pos, means)]
    for r in (report, torch_path):
        assert r.metrics["acc_model"] == pytest.approx(np.mean(model == y), rel=1e-12)
        assert r.metrics["nc4"] == pytest.approx(np.mean(model != ncc), rel=1e-12)
    assert 0 < report.metrics["acc_model"] < 1


def test_nearest_class_mean_and_pair_sweeps_on_the_most_frequent_classes(monkeypatch):
    """Past their work limits, acc_ncc and nc4 cover the rows of the K_n most frequent classes against those classes'
    means, and the pair sweeps the pairs among the K_p most frequent; the plan is in settings and warnings; every
    other collapse measure still covers every class (the equiangle and ETF measures from moments)."""
    C, K, d = 5000, 40, 12
    ids, pos, H, W, b, pred = _head(6, C, K, d, 4000)
    y = ids[pos]
    full = nc_probe.analyze_features(H, y, W, b)
    counts = np.bincount(pos, minlength=K)
    k_pairs, k_ncc = 15, 9
    monkeypatch.setattr(workplan, "PAIR_WORK", k_pairs * (k_pairs - 1) // 2 * d)
    order = np.lexsort((ids, -counts))
    rows = np.cumsum(counts[order])
    monkeypatch.setattr(workplan, "SCORE_WORK", int(rows[k_ncc - 1]) * k_ncc * d)
    store = nc_probe.FeatureStore.from_arrays(H, y, predictions=pred, W=W, b=b)
    r = nc_probe.analyze_store(store)
    assert r.settings["frequent_classes"] == {"classes": K, "pairs": k_pairs, "ncc": k_ncc}
    assert any("nc1_cdnv" in w and f"{k_pairs} most frequent" in w for w in r.warnings)
    assert any(w.startswith("acc_ncc and nc4") and f"{k_ncc} most frequent" in w for w in r.warnings)
    top_pairs, top_ncc = np.sort(order[:k_pairs]), np.sort(order[:k_ncc])
    means = np.stack([H[pos == k].astype(np.float64).mean(0) for k in range(K)])
    # nearest class mean over the top-k_ncc classes' rows and means
    rows_in = np.isin(pos, top_ncc)
    ncc = ids[top_ncc[_ncc(H[rows_in], pos[rows_in], means[top_ncc])]]
    m = r.metrics
    assert m["acc_ncc"] == pytest.approx(np.mean(ncc == y[rows_in]), rel=1e-12)
    assert m["nc4"] == pytest.approx(np.mean(pred[rows_in] != ncc), rel=1e-12)
    assert m["acc_model"] == pytest.approx(np.mean(pred == y), rel=1e-12)
    acc = r.per_class["acc_ncc"]
    assert [a is not None for a in acc] == [k in set(top_ncc.tolist()) for k in range(K)]
    # pair measures over the top-k_pairs classes, centred on the mean of every class's mean
    Mc = means - means.mean(0)
    var = np.array([np.square(H[pos == k] - means[k]).sum(1).mean() for k in range(K)])
    iu = np.triu_indices(k_pairs, 1)
    sub = Mc[top_pairs]
    dist2 = np.square(sub[:, None] - sub[None]).sum(2)[iu]
    assert m["nc1_cdnv"] == pytest.approx(np.mean((var[top_pairs][iu[0]] + var[top_pairs][iu[1]]) / (2 * dist2)),
                                          rel=1e-9)
    U = sub / np.linalg.norm(sub, axis=1, keepdims=True)
    assert m["nc2_maxangle_M"] == pytest.approx(np.mean(np.abs((U @ U.T)[iu] + 1 / (K - 1))), rel=1e-9)
    assert r.pairs["cdnv"]["count"] == len(iu[0])
    assert {r.pairs["mean_cosine"]["top"][0]["a"], r.pairs["mean_cosine"]["top"][0]["b"]} <= set(ids[top_pairs])
    # every class: equiangle and etf (moments) as the full sweep gives them; nc1, nc3 and the rest unchanged
    for key in ("nc1", "nc2_equinorm_M", "nc2_equiangle_M", "nc2_etf_M", "nc2_equinorm_W", "nc2_equiangle_W",
                "nc2_etf_W", "nc3", "nc3_etf", "unc3", "vci", "nc1_quot", "bias_collapse", "minority_norm_spearman",
                "minority_cosine_mean", "rank_numerical_total"):
        assert m[key] == pytest.approx(full.metrics[key], rel=1e-9), key


@pytest.mark.parametrize("pairs", ["all", "frequent"])
def test_block_by_block_measures_equal_the_direct_forms(monkeypatch, pairs):
    """Above DIRECT_ELEMENTS the centred means and W's rows are never held whole: every measure, taken a few
    classes at a time from d x d products, equals the direct forms."""
    ids, pos, H, W, b, _ = _head(7, 3000, 30, 9, 2500)
    y = ids[pos]
    if pairs == "frequent":
        monkeypatch.setattr(workplan, "PAIR_WORK", 10 * 9 // 2 * 9)
    direct = nc_probe.analyze_features(H, y, W, b)
    monkeypatch.setattr(compute, "DIRECT_ELEMENTS", 0)
    monkeypatch.setattr(blockwise, "BLOCK_ROWS", 7)
    blocked = nc_probe.analyze_features(H, y, W, b)
    assert_close(direct.metrics, blocked.metrics, "metrics", RTOL)
    assert_close(direct.per_class["mean_norm"], blocked.per_class["mean_norm"], "mean_norm", RTOL)


def test_moment_forms_match_the_pairwise_definitions():
    rng = np.random.default_rng(8)
    V = rng.normal(size=(25, 4)) + 0.5
    V[3] = 0.0  # a zero row: its cosines count as 0
    rm = blockwise.RowMoments(4, 25)
    for s in range(0, 25, 6):
        rm.add(s, V[s:s + 6])
    norms = np.linalg.norm(V, axis=1)
    U = V / np.where(norms > 0, norms, 1)[:, None]
    iu = np.triu_indices(25, 1)
    assert rm.equiangle() == pytest.approx(np.std((U @ U.T)[iu]), rel=1e-12)
    G = V @ V.T
    E = (np.eye(25) - 1 / 25) / np.sqrt(24)
    assert rm.etf() == pytest.approx(np.linalg.norm(G / np.linalg.norm(G) - E), rel=1e-10)


def test_angle_bases_beyond_their_budget_keep_the_most_frequent_classes(monkeypatch):
    """The angle classes' bases are kept within a budget: when they do not fit, the angles cover the most frequent
    classes whose bases fit (the same whatever the group order), with a warning."""
    ids, pos, H, W, b, _ = _head(9, 400, 12, 8, 1200)
    y = ids[pos]
    full = nc_probe.analyze_features(H, y)
    k = full.per_class["basis_dim"]
    counts = np.array(full.per_class["n"])
    order = np.lexsort((ids, -counts))
    sizes = np.cumsum(np.array(k)[order] * 8 * 8)
    budget = int(sizes[-2] + sizes[-1]) // 2  # all but the least frequent class fit
    in_pass1 = subspace_bytes(len(ids), 8)
    assert in_pass1 // 2 <= budget
    monkeypatch.setattr(subspace_report, "BASIS_BYTES", budget)
    for memory in (in_pass1, in_pass1 // 3):  # moments in pass 1, and in groups over several passes
        r = nc_probe.analyze_features(H, y, memory_budget=memory)
        assert r.angles["class_ids"] == sorted(ids[order[:-1]].tolist())
        assert any(f"principal angles for the {len(ids) - 1} most frequent" in w for w in r.warnings)
        sel = [full.angles["class_ids"].index(c) for c in r.angles["class_ids"]]
        np.testing.assert_allclose(r.angles["angle_min"], full.angles["angle_min"][np.ix_(sel, sel)], rtol=1e-9,
                                   atol=1e-9)


def test_a_300k_way_head_takes_memory_of_the_classes_present_not_of_the_head(tmp_path):
    """The analysis of a 300k x 96 float32 head with 20 classes present, in a fresh process: its peak memory
    beyond what it held before (the store, W included) stays far below one float64 copy of W or one C x d array
    of means (230 MB)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs /proc/self/clear_refs to reset the peak RSS")
    C, K, d = 300_000, 20, 96
    ids, pos, H, W, b, pred = _head(10, C, K, d, 3000)
    path = nc_probe.write_store(tmp_path / "head.safetensors", H, ids[pos], predictions=pred, W=W, b=b)
    small = nc_probe.write_store(tmp_path / "small.safetensors", H[:300], pos[:300], W=W[ids], b=b[ids])
    script = textwrap.dedent(f"""
        import json, nc_probe
        def kib(key):
            return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
        nc_probe.analyze_file({str(small)!r})  # imports and first-use costs, before the measurement
        store = nc_probe.open_store({str(path)!r})
        before = kib("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")
        report = nc_probe.analyze_store(store, sha256="-")  # no digest thread: its buffers are not the point
        print(json.dumps({{"growth": (kib("VmHWM") - before) * 1024, "acc_model": report.metrics["acc_model"]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["acc_model"] == pytest.approx(np.mean(pred == ids[pos]))
    assert out["growth"] < C * d * 8 / 2, out  # measured: 20-80 MB (allocator and thread arenas vary)
