"""The analyze command as a user runs it: outputs, exit codes, one-line errors, no half-written files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import nc_probe
from nc_probe.cli.app import app

runner = CliRunner()


def _data(seed=0, n=400, d=12, C=4):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    means = rng.normal(size=(C, d)) * 3
    H = means[y] + rng.normal(size=(n, d))
    return H, y, means, np.zeros(C)


@pytest.fixture
def feature_npz(tmp_path):
    H, y, W, b = _data()
    path = tmp_path / "feats.npz"
    np.savez(path, H=H, y=y, W=W, b=b)
    return path


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_analyze_writes_json_and_tables_matching_the_api(feature_npz, tmp_path):
    out = tmp_path / "out"
    result = run("analyze", feature_npz, "--json", tmp_path / "r.json", "--out", out)
    assert result.exit_code == 0, result.output
    assert "nc1" in result.output and "rate_reduction" in result.output
    report = nc_probe.Report.load(tmp_path / "r.json")
    H, y, W, b = _data()
    direct = nc_probe.analyze_features(H, y, W, b)
    for key, value in direct.metrics.items():  # None: not computed for these inputs (lidar needs views)
        assert report.metrics[key] == (None if value is None else pytest.approx(value, rel=1e-12, abs=1e-12)), key
    assert sorted(p.name for p in out.iterdir()) == ["angles.csv", "metrics.csv", "pairs.csv", "per_class.csv",
                                                     "report.json"]
    per_class = pd.read_csv(out / "per_class.csv")
    assert list(per_class["n"]) == list(np.bincount(y))
    assert per_class["rank_energy95"].tolist() == direct.per_class["rank_energy95"]
    angles = pd.read_csv(out / "angles.csv")
    assert len(angles) == 4 * 3 // 2
    assert angles["angle_min"].tolist() == pytest.approx(
        [direct.angles["angle_min"][i][j] for i in range(4) for j in range(i + 1, 4)])
    assert json.loads((out / "report.json").read_text())["schema_version"] == report.schema_version


def test_report_json_round_trips_and_reanalyzes(feature_npz, tmp_path):
    assert run("analyze", feature_npz, "-q", "--json", tmp_path / "a.json").exit_code == 0
    first = nc_probe.Report.load(tmp_path / "a.json")
    assert nc_probe.Report.from_json(first.to_json()) == first
    result = run("analyze", tmp_path / "a.json", "-q", "--json", tmp_path / "b.json")
    assert result.exit_code == 0
    assert nc_probe.Report.load(tmp_path / "b.json") == first


def test_settings_reach_the_report(feature_npz, tmp_path):
    result = run("analyze", feature_npz, "-q", "--json", tmp_path / "r.json", "--eps2", "0.25",
                 "--subspace-dim", "2", "--classes", "0-2")
    assert result.exit_code == 0, result.output
    r = nc_probe.Report.load(tmp_path / "r.json")
    assert r.settings["eps2"] == 0.25 and r.settings["subspace_dim"] == 2
    assert r.per_class["subspace_class_ids"] == [0, 1, 2]
    assert r.per_class["basis_dim"] == [2, 2, 2]
    assert r.metrics["rate_reduction"] is None  # needs every class


def test_mahalanobis_switch_reaches_the_report(feature_npz, tmp_path):
    """acc_ncc_mahalanobis is opt-in: null without --mahalanobis, the API's number with it, recorded either way."""
    assert run("analyze", feature_npz, "-q", "--json", tmp_path / "off.json").exit_code == 0
    result = run("analyze", feature_npz, "-q", "--json", tmp_path / "on.json", "--mahalanobis")
    assert result.exit_code == 0, result.output
    off, on = nc_probe.Report.load(tmp_path / "off.json"), nc_probe.Report.load(tmp_path / "on.json")
    assert off.metrics["acc_ncc_mahalanobis"] is None and off.settings["mahalanobis"] is False
    H, y, W, b = _data()
    direct = nc_probe.analyze_features(H, y, W, b, mahalanobis=True).metrics["acc_ncc_mahalanobis"]
    assert on.settings["mahalanobis"] is True and on.metrics["acc_ncc_mahalanobis"] == direct is not None
    help_text = runner.invoke(app, ["analyze", "--help"], terminal_width=400).output
    assert "--mahalanobis" in help_text and "0.2x one float64 X^T X" in help_text


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"nc-probe {nc_probe.__version__}"


def test_help_explains_every_metric():
    result = runner.invoke(app, ["analyze", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for key in nc_probe.metrics.METRIC_DOCS:
        assert key in result.output, key


def _bad_inputs(tmp_path):
    H, y, W, b = _data()
    Hn = H.copy()
    Hn[5, 2] = np.nan
    arrays = {"mismatch": (dict(H=H, y=y[:-3]), "labels"),
              "oneclass": (dict(H=H, y=np.zeros(len(y), int)), "at least 2 classes"),
              "nan": (dict(H=Hn, y=y), "NaN"),
              "inf": (dict(H=Hn * 0 + np.inf, y=y), "NaN or Inf"),
              "huge": (dict(H=H * 1e200, y=y), "too large for float64"),
              "wshape": (dict(H=H, y=y, W=W[:, :5]), "W has shape"),
              "wrows": (dict(H=H, y=y, W=W[:2]), "W has 2 rows"),
              "unknown": (dict(feats=H, y=y), "unknown array name")}
    cases = {}
    for name, (content, message) in arrays.items():
        np.savez(tmp_path / f"{name}.npz", **content)
        cases[tmp_path / f"{name}.npz"] = message
    good = nc_probe.write_store(tmp_path / "good.safetensors", H, y, W=W, b=b)
    raw = {"empty.safetensors": (b"", "empty"),
           "truncated.safetensors": (good.read_bytes()[:-100], "truncated"),
           "garbage.safetensors": (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "not valid JSON"),
           "truncated.npz": ((tmp_path / "mismatch.npz").read_bytes()[:50], "npz")}
    for name, (content, message) in raw.items():
        (tmp_path / name).write_bytes(content)
        cases[tmp_path / name] = message
    return cases


def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path):
    for path, words in _bad_inputs(tmp_path).items():
        out = tmp_path / f"{path.stem}-out"
        result = run("analyze", path, "--json", tmp_path / f"{path.stem}.json", "--out", out)
        assert result.exit_code == 2, (path, result.output)
        message = result.output.strip()
        assert len(message.splitlines()) == 1, message
        assert message.startswith("error:") and path.name in message and words in message, message
        assert "Traceback" not in message
        assert not (tmp_path / f"{path.stem}.json").exists() and not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--classes", "3-1"], "runs backwards"),
    (["--classes", "0,9"], "--classes names [9]"),
    (["--memory-budget", "lots"], "is not a size"),
    (["--eps2", "0"], "--eps2 must be positive"),
    (["--subspace-dim", "99"], "outside 1..d=12"),
])
def test_bad_options_exit_2(feature_npz, args, words):
    result = run("analyze", feature_npz, *args)
    assert result.exit_code == 2 and words in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_small_memory_budget_runs_in_groups_and_a_tiny_one_says_what_to_raise(tmp_path):
    rng = np.random.default_rng(3)
    y = np.arange(80) % 8  # 10 samples per class in d=12: each class keeps its rows (960 B), not 12x12 moments
    H = rng.normal(size=(8, 12))[y] * 3 + rng.normal(size=(80, 12))
    path = tmp_path / "f.npz"
    np.savez(path, H=H, y=y)
    full = run("analyze", path, "--json", tmp_path / "full.json")
    grouped = run("analyze", path, "--memory-budget", "4000", "--json", tmp_path / "r.json")
    assert full.exit_code == 0 and grouped.exit_code == 0, grouped.output
    assert "subspace statistics in 8 groups" in " ".join(grouped.output.split())
    a, b = nc_probe.Report.load(tmp_path / "full.json"), nc_probe.Report.load(tmp_path / "r.json")
    for key, value in a.metrics.items():
        assert (value is None and b.metrics[key] is None) or b.metrics[key] == pytest.approx(value, rel=1e-10), key
    tiny = run("analyze", path, "--memory-budget", "1KiB")
    assert tiny.exit_code == 2 and "Raise --memory-budget to at least" in tiny.output, tiny.output


def test_real_process_exit_code_and_no_traceback(tmp_path):
    path = tmp_path / "missing.npz"
    proc = subprocess.run([sys.executable, "-m", "nc_probe", "analyze", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: no such file. Check the path (or name a shipped sample, e.g. sample:ce)."]
    assert proc.stdout == ""


def test_unwritable_output_is_a_user_error(feature_npz, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("analyze", feature_npz, "-q", "--json", blocker / "r.json")
    assert result.exit_code == 2 and "writable" in result.output
