"""Scale-out: torchrun with gloo on the CPU gives the single-process report, and a failing rank fails the run.
(Features over the spill threshold going to disk: test_store.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nc_probe

REPO = Path(__file__).resolve().parent.parent
CE = REPO / "sample_checkpoints" / "ce.pt"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo")


def torchrun(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*TORCHRUN, "-m", "nc_probe", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def assert_same_report(a: nc_probe.Report, b: nc_probe.Report, rel=1e-9):
    assert a.inputs["num_samples"] == b.inputs["num_samples"]
    for key, value in a.metrics.items():
        if value is None:
            assert b.metrics[key] is None, key
        else:
            assert b.metrics[key] == pytest.approx(value, rel=rel, abs=1e-12), key
    for key in ("n", "rank_energy95", "rank_energy99", "rank_numerical", "coding_rate_class", "acc_model",
                "acc_ncc", "within_class_variance"):
        assert np.allclose(a.per_class[key], b.per_class[key], rtol=rel, atol=1e-12), key
    assert np.allclose(a.angles["angle_min"], b.angles["angle_min"], rtol=1e-7, atol=1e-7)
    # the PCA sample: the same rows (drawn from the whole data set's row numbers), in the same order
    pa, pb = a.per_class["pca2d"], b.per_class["pca2d"]
    assert pa["labels"] == pb["labels"] and pa["num_samples"] == pb["num_samples"]
    scale = np.abs(pa["points"]).max()
    assert np.allclose(pa["points"], pb["points"], rtol=1e-4, atol=1e-6 * scale)  # kept to 5 significant digits


def test_two_processes_match_one_on_the_sample_checkpoint(tmp_path):
    single = nc_probe.analyze_checkpoint(CE, device="cpu")
    assert single.inputs["num_samples"] % 2 == 1  # 1347 train samples: the shards are unequal
    proc = torchrun("analyze", CE, "--device", "cpu", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_report(single, nc_probe.Report.load(tmp_path / "r.json"))
    # rank 0 prints the summary once; the other rank stays quiet
    assert proc.stdout.count("rate_reduction") == 1


def test_two_processes_match_one_on_a_feature_file(tmp_path):
    rng = np.random.default_rng(3)
    n, d, C = 4001, 24, 5  # more rows than the PCA sample keeps (2000): each rank holds part of the sample
    y = rng.integers(0, C, n)
    H = rng.normal(size=(C, d))[y] * 4 + rng.normal(size=(n, d))
    W, b = rng.normal(size=(C, d)), rng.normal(size=C)
    path = nc_probe.write_store(tmp_path / "f.safetensors", H.astype(np.float32), y, W=W, b=b)
    single = nc_probe.analyze_file(path)
    proc = torchrun("analyze", path, "-q", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_report(single, nc_probe.Report.load(tmp_path / "r.json"))


def test_a_failing_rank_fails_the_run_with_a_clear_message(tmp_path):
    rng = np.random.default_rng(4)
    n, d = 400, 8
    y = np.arange(n) % 4
    H = rng.normal(size=(n, d))
    H[300, 2] = np.nan  # only rank 1's block [200, 400) holds the bad row
    path = nc_probe.write_store(tmp_path / "bad.safetensors", H, y)
    proc = torchrun("analyze", path, "--json", tmp_path / "r.json", timeout=120)
    assert proc.returncode != 0
    assert "NaN or Inf" in proc.stderr and "bad.safetensors" in proc.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX shell")
def test_gate_under_torchrun_exits_like_a_single_process(tmp_path):
    proc = torchrun("gate", CE, "--device", "cpu", "--rule", "nc1<=0.01", "--rule", "acc_model>=0.99")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = torchrun("gate", CE, "--device", "cpu", "--rule", "nc1<=0.0001")
    assert proc.returncode != 0


def test_compare_under_torchrun_matches_the_single_process_reports(tmp_path):
    mcr2 = REPO / "sample_checkpoints" / "mcr2.pt"
    proc = torchrun("compare", f"ce={CE}", f"mcr2={mcr2}", "--device", "cpu", "-q", "--json", tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = json.loads((tmp_path / "c.json").read_text())["reports"]
    for label, path in (("ce", CE), ("mcr2", mcr2)):
        single = nc_probe.analyze_checkpoint(path, device="cpu")
        assert_same_report(single, nc_probe.Report.from_dict(reports[label]))


def test_two_processes_give_the_single_process_layer_report(tmp_path):
    single = nc_probe.analyze_layers("sample:deep", device="cpu")
    proc = torchrun("layers", "sample:deep", "--device", "cpu", "-q", "--json", tmp_path / "l.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    multi = nc_probe.LayerReport.load(tmp_path / "l.json")
    assert multi.names == single.names and multi.inputs["num_samples"] == single.inputs["num_samples"]
    for a, b in zip(single.layers, multi.layers):
        for key, value in a["metrics"].items():
            if value is None:
                assert b["metrics"][key] is None, (a["name"], key)
            else:
                assert b["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (a["name"], key)
    for key in ("rho", "a", "r2"):
        assert multi.laws["D_l"][key] == pytest.approx(single.laws["D_l"][key], rel=1e-9)
    assert multi.laws["plateau_acc_linear_probe"] == single.laws["plateau_acc_linear_probe"]


def test_leave_destroys_only_a_group_this_process_started():
    """The CLI leaves the process group it started (barrier, then destroy: ranks tear down together) and leaves
    alone one that the caller had started before it."""
    import torch.distributed as dist

    from nc_probe.core import distributed

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        distributed.leave(started=False)
        assert distributed.initialized()
        distributed.leave(started=True)
        assert not distributed.initialized()
        distributed.leave(started=True)  # nothing left to leave: no error
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
