"""Label-free measures in reports: class reports carry rankme, alpha_req and rank_effective_total of all their rows
(from the total statistics), and ``nc-probe analyze`` of features without labels reports them instead of refusing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nc_probe
from nc_probe.metrics.label_free import alpha_req, rank_effective_total, rankme_rows

REPO = Path(__file__).resolve().parent.parent


def known_spectrum(N: int = 400, alpha: float = 1.5, d: int = 8, seed: int = 0):
    """Centred rows with singular values s_k = k^(-alpha/2): the covariance eigenvalues are s_k^2 / N = k^-alpha / N
    exactly, so alpha_req = alpha, and rankme is the entropy form of the s_k."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(N, d))
    A -= A.mean(0)  # columns orthogonal to the ones vector: the rows' mean is 0
    U, _ = np.linalg.qr(A)
    V, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s = np.arange(1, d + 1) ** (-alpha / 2)
    Z = U @ np.diag(s) @ V.T
    p = s / s.sum() + 1e-7
    return Z, alpha, math.exp(-(p * np.log(p)).sum()), s**2 / N


def test_class_reports_carry_the_label_free_measures_of_all_rows():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), [30, 50, 20, 40])
    H = rng.normal(size=(4, 10))[y] * 3 + rng.normal(size=(len(y), 10)) + 5.0  # far from the origin: uncentred
    report = nc_probe.analyze_features(H, y)
    rows = torch.from_numpy(H)
    lam = torch.linalg.eigvalsh(torch.from_numpy(np.cov(H.T, bias=True)))
    assert report.metrics["rankme"] == pytest.approx(rankme_rows(rows), rel=1e-9)
    assert report.metrics["alpha_req"] == pytest.approx(alpha_req(lam, n_rows=len(H)), rel=1e-9)
    assert report.metrics["rank_effective_total"] == pytest.approx(rank_effective_total(lam, n_rows=len(H)),
                                                                   rel=1e-9)
    assert report.metrics["lidar"] is None  # no views


def test_streamed_statistics_report_the_same_label_free_measures():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), [25, 35, 45])
    H = rng.normal(size=(3, 6))[y] + 0.5 * rng.normal(size=(len(y), 6))
    stats = nc_probe.ClassStats(3, 6)
    for s in range(0, len(y), 11):
        stats.update(H[s:s + 11], y[s:s + 11])
    streamed = nc_probe.report_from_stats(stats)
    whole = nc_probe.analyze_features(H, y)
    for key in ("rankme", "alpha_req", "rank_effective_total"):
        assert streamed.metrics[key] == pytest.approx(whole.metrics[key], rel=1e-9), key


def analyze_cli(*args):
    return subprocess.run([sys.executable, "-m", "nc_probe", "analyze", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_analyze_of_unlabelled_features_reports_the_known_spectrum(tmp_path):
    Z, alpha, expected_rankme, lam = known_spectrum()
    np.savez(tmp_path / "ssl.npz", features=Z)
    proc = analyze_cli(tmp_path / "ssl.npz", "--json", tmp_path / "r.json", "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert metrics["rankme"] == pytest.approx(expected_rankme, rel=1e-6)
    assert metrics["alpha_req"] == pytest.approx(alpha, rel=1e-6)
    assert metrics["rank_effective_total"] == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-6)
    assert metrics["lidar"] is None
    report = nc_probe.Report.load(tmp_path / "r.json")  # reads back
    assert report.inputs["labels"] is False and report.inputs["num_samples"] == len(Z)


def test_unlabelled_views_give_lidar_and_the_summary_prints(tmp_path):
    rng = np.random.default_rng(3)
    src = np.repeat(np.arange(30), 4)
    Z = rng.normal(size=(30, 5))[src] + 0.1 * rng.normal(size=(len(src), 5))
    np.savez(tmp_path / "views.npz", H=Z, views=src)
    proc = analyze_cli(tmp_path / "views.npz")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rankme" in proc.stdout and "lidar" in proc.stdout
    report = nc_probe.analyze_file(tmp_path / "views.npz")
    assert 1 < report.metrics["lidar"] <= 5 and report.inputs["num_sources"] == 30


def test_a_file_that_is_neither_still_names_what_is_missing(tmp_path):
    np.savez(tmp_path / "odd.npz", y=np.arange(4))
    with pytest.raises(nc_probe.InputError, match="no features array"):
        nc_probe.analyze_file(tmp_path / "odd.npz")


def test_a_pt_file_of_features_alone_is_features_not_weights(tmp_path):
    Z, alpha, expected_rankme, _ = known_spectrum(seed=4)
    torch.save({"features": torch.from_numpy(Z)}, tmp_path / "ssl.pt")
    proc = analyze_cli(tmp_path / "ssl.pt", "--json", tmp_path / "r.json", "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert metrics["rankme"] == pytest.approx(expected_rankme, rel=1e-6)
    assert metrics["alpha_req"] == pytest.approx(alpha, rel=1e-6)


def test_unlabelled_report_renders_html_and_plots(tmp_path):
    Z, *_ = known_spectrum(seed=5)
    np.savez(tmp_path / "ssl.npz", features=Z)
    proc = analyze_cli(tmp_path / "ssl.npz", "-q", "--html", tmp_path / "r.html", "--plots", tmp_path / "plots")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rankme" in (tmp_path / "r.html").read_text()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["label_free.png", "label_free.svg"]


def test_a_safetensors_file_of_features_alone_reports_the_known_spectrum(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.numpy import save_file

    Z, alpha, expected_rankme, _ = known_spectrum(seed=6)
    save_file({"features": Z}, str(tmp_path / "ssl.safetensors"))
    proc = analyze_cli(tmp_path / "ssl.safetensors", "--json", tmp_path / "r.json", "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert metrics["rankme"] == pytest.approx(expected_rankme, rel=1e-6)
    assert metrics["alpha_req"] == pytest.approx(alpha, rel=1e-6)


@pytest.mark.parametrize("source, said", [
    (np.arange(40) % 4 + 0j, "dtype complex128"),
    (np.array([str(i % 4) for i in range(40)]), "dtype string"),
    (np.full(40, 2**62, dtype=np.int64), "source ids run from"),
    ((np.arange(40) % 4).astype(np.uint64) + np.uint64(2**63), "source ids run from"),
    (np.arange(40).reshape(20, 2), "shape (20, 2) for 40 rows"),
    (-(np.arange(40) % 4), "source ids run from -3"),
])
@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_a_hostile_source_array_is_one_line_and_nothing_written(tmp_path, source, said, suffix):
    # the views array of an unlabelled file is read like labels: its dtype and bound are checked before torch sees
    # it (complex, string and uint64 ids were tracebacks), and a 2-D array is not flattened into "one id per row"
    from typer.testing import CliRunner

    from nc_probe.cli.app import app

    Z = np.random.default_rng(0).normal(size=(40, 5))
    path = tmp_path / f"views{suffix}"
    if suffix == ".npz":
        np.savez(path, features=Z, views=source)
    elif source.dtype.kind == "U":
        pytest.skip("torch has no string tensors")
    else:
        torch.save({"features": torch.from_numpy(Z), "views": torch.from_numpy(source)}, path)
    result = CliRunner().invoke(app, ["analyze", str(path), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0] and said in lines[0], lines
    assert not (tmp_path / "r.json").exists()
