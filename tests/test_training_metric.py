"""NeuralCollapse, the streaming metric: the report of analyze_features on the rows seen, batch by batch and under
torchrun (uneven, class-skewed shares; computed twice; reset between epochs), and the label-free mode."""

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

import nc_probe
from nc_probe.metrics.label_free import lidar, rankme_rows

REPO = Path(__file__).resolve().parent.parent
OWN_PASS = ("acc_nearest_subspace",)  # its bases come from a pass of analyze's own: None in the streaming report


def blobs(seed: int, counts: dict[int, int], d: int, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    C = max(counts) + 1
    centres = rng.normal(size=(C, d)) * 3
    y = np.concatenate([np.full(n, c) for c, n in counts.items()])
    rng.shuffle(y)
    H = centres[y] + spread * rng.normal(size=(len(y), d))
    W = centres + 0.1 * rng.normal(size=(C, d))
    b = 0.1 * rng.normal(size=C)
    return H, y, W, b


def assert_matches(report, reference, rel=1e-9):
    for key, value in reference.metrics.items():
        if key in OWN_PASS:
            continue
        got = report.metrics[key]
        assert (got is None) == (value is None), key
        if value is not None:
            assert got == pytest.approx(value, rel=rel, abs=1e-12), key
    assert report.per_class["n"] == reference.per_class["n"]


def test_batches_give_the_report_of_analyze_features_with_the_exact_second_pass():
    H, y, W, b = blobs(1, {0: 50, 1: 31, 2: 77, 4: 20}, 8)  # class 3 absent
    metric = nc_probe.NeuralCollapse(5, eps2=1.0, mahalanobis=True)
    batches = [(H[s:s + 13], y[s:s + 13]) for s in range(0, len(y), 13)]
    for h, labels in batches:
        metric.update(torch.from_numpy(h), torch.from_numpy(labels))
    report = metric.compute(W, b, second_pass=batches)
    reference = nc_probe.analyze_features(H, y, W, b, eps2=1.0, mahalanobis=True)
    assert_matches(report, reference)
    assert report.metrics["acc_ncc_mahalanobis"] is not None and report.metrics["nc4"] is not None
    again = metric.compute(W, b, second_pass=lambda: iter(batches))  # a callable works, and nothing doubles
    assert_matches(again, reference)
    # without the second pass the prediction measures are absent, the rest is the same
    one_pass = metric.compute(W, b)
    assert one_pass.metrics["nc4"] is None and one_pass.metrics["acc_ncc"] is None
    assert one_pass.metrics["nc1"] == pytest.approx(reference.metrics["nc1"], rel=1e-9)


def test_mahalanobis_is_scored_in_the_second_pass_only_when_the_settings_ask():
    H, y, W, b = blobs(3, {0: 30, 1: 40, 2: 35}, 5)
    batches = [(H, y)]
    metric = nc_probe.NeuralCollapse(3)
    metric.update(torch.from_numpy(H), torch.from_numpy(y))
    scorer = metric.second_pass(W, b)
    assert scorer.maha is None
    report = metric.compute(W, b, second_pass=batches)
    assert report.metrics["acc_ncc_mahalanobis"] is None and report.metrics["acc_ncc"] is not None
    assert report.settings["mahalanobis"] is False

def test_reset_forgets_and_float32_features_keep_float64_state():
    H, y, W, _ = blobs(2, {0: 40, 1: 40, 2: 40}, 6)
    metric = nc_probe.NeuralCollapse(3)
    metric.update(torch.from_numpy(H[:60]).float(), torch.from_numpy(y[:60]))
    metric.reset()
    h32 = torch.from_numpy(H).float()
    metric.update(h32, torch.from_numpy(y))
    report = metric.compute(W)
    reference = nc_probe.analyze_features(h32.numpy(), y, W)
    assert report.inputs["num_samples"] == 120
    assert report.metrics["nc1"] == pytest.approx(reference.metrics["nc1"], rel=1e-9)
    assert report.metrics["rankme"] == pytest.approx(reference.metrics["rankme"], rel=1e-9)


def test_label_free_mode_reports_rankme_of_the_rows_and_lidar_of_views():
    rng = np.random.default_rng(5)
    sources = rng.normal(size=(40, 6)) * np.array([4, 3, 2, 1, 0.5, 0.1])
    views = 3
    Z = np.repeat(sources, views, axis=0) + 0.2 * rng.normal(size=(40 * views, 6))
    src = np.repeat(np.arange(40), views)
    metric = nc_probe.NeuralCollapse()
    for s in range(0, len(Z), 17):
        metric.update(torch.from_numpy(Z[s:s + 17]), source=torch.from_numpy(src[s:s + 17]))
    report = metric.compute()
    assert report.metrics["rankme"] == pytest.approx(rankme_rows(torch.from_numpy(Z)), rel=1e-9)
    # lidar against a direct computation from the rows
    means = np.stack([Z[src == k].mean(0) for k in range(40)])
    within = Z - means[src]
    sigma_w = within.T @ within / len(Z)
    centred = means - means.mean(0)
    sigma_b = centred.T @ centred / 40
    assert report.metrics["lidar"] == pytest.approx(lidar(torch.from_numpy(sigma_w), torch.from_numpy(sigma_b)),
                                                    rel=1e-8)
    assert report.inputs["num_sources"] == 40 and report.inputs["class_ids"] == []


def test_misuse_is_an_input_error():
    with pytest.raises(nc_probe.InputError, match="num_classes"):
        nc_probe.NeuralCollapse(1)
    m = nc_probe.NeuralCollapse(3)
    with pytest.raises(nc_probe.InputError, match="without labels"):
        m.update(torch.zeros(2, 4))
    with pytest.raises(nc_probe.InputError, match="before any update"):
        m.compute()
    m.update(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(nc_probe.InputError, match="dimension 5"):
        m.update(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(nc_probe.InputError, match="label-free"):
        nc_probe.NeuralCollapse().update(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(nc_probe.InputError, match="dim=4"):
        nc_probe.NeuralCollapse(3, 4).update(torch.zeros(2, 5), torch.tensor([0, 1]))


def test_state_bytes_count_the_statistics():
    m = nc_probe.NeuralCollapse(10, subspaces=False)
    m.update(torch.randn(50, 16, dtype=torch.float64), torch.arange(50) % 10)
    # scatter and the unit-feature total, d x d each, plus per class a mean row and three scalars
    assert m.state_bytes() >= 2 * 16 * 16 * 8 + 10 * 16 * 8


DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch, torch.distributed as dist
    import nc_probe
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = {}
    for epoch in range(2):
        rng = np.random.default_rng(10 + epoch)
        C, d = 6, 7
        centres = rng.normal(size=(C, d)) * 2
        counts = [90, 40, 25, 60, 0, 33]  # class 4 absent
        y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
        H = centres[y] + 0.4 * rng.normal(size=(len(y), d))
        W = centres + 0.2 * rng.normal(size=(C, d)); b = 0.1 * rng.normal(size=C)
        # class-skewed, uneven shares: rank 0 holds classes 0-1 and a third of class 3, rank 1 the rest
        mine = np.flatnonzero((y <= 1) | ((y == 3) & (np.arange(len(y)) % 3 == 0)))
        if rank == 1:
            mine = np.setdiff1d(np.arange(len(y)), mine)
        metric = nc_probe.NeuralCollapse(C, eps2=0.5)
        batches = [(torch.from_numpy(H[mine[s:s + 7]]), torch.from_numpy(y[mine[s:s + 7]]))
                   for s in range(0, len(mine), 7)]
        for h, lab in batches:
            metric.update(h, lab)
        first = metric.compute(W, b, second_pass=batches)
        second = metric.compute(W, b, second_pass=batches)
        reference = nc_probe.analyze_features(H, y, W, b, eps2=0.5) if True else None
        out[epoch] = {"first": first.metrics, "second": second.metrics, "n": first.inputs["num_samples"],
                      "local": len(mine)}
        metric.reset()
    json.dump(out, open(sys.argv[1] + f".{rank}.json", "w"))
    dist.barrier()  # both ranks tear down together (gloo can abort a rank that exits first: test_callbacks.py)
    dist.destroy_process_group()
""")


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo")
def test_two_processes_with_skewed_shares_equal_one_analysis(tmp_path):
    script = tmp_path / "ddp_metric.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for epoch in range(2):
        rng = np.random.default_rng(10 + epoch)
        C, d = 6, 7
        centres = rng.normal(size=(C, d)) * 2
        counts = [90, 40, 25, 60, 0, 33]
        y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
        H = centres[y] + 0.4 * rng.normal(size=(len(y), d))
        W = centres + 0.2 * rng.normal(size=(C, d))
        b = 0.1 * rng.normal(size=C)
        reference = nc_probe.analyze_features(H, y, W, b, eps2=0.5)
        locals_ = []
        for rank in range(2):
            got = json.loads((tmp_path / f"out.{rank}.json").read_text())[str(epoch)]
            locals_.append(got["local"])
            assert got["n"] == len(y)
            for which in ("first", "second"):
                metrics = got[which]
                for key, value in reference.metrics.items():
                    if key in OWN_PASS:
                        continue
                    assert (metrics[key] is None) == (value is None), (rank, which, key)
                    if value is not None:
                        assert metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (rank, which, key)
        assert locals_[0] != locals_[1] and sum(locals_) == len(y)
