"""Train vs test in one run: the test-collapse measures against their definitions from raw rows, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import nc_probe
from nc_probe.analysis.splits import TEST_KEYS, heldout_collapse, parse_splits
from nc_probe.cli.app import app
from nc_probe.core.errors import InputError
from nc_probe.extract.store import open_store


def reference(Htr, ytr, Hte, yte):
    """Hui et al.'s measures from their definitions (docs/metrics.md, "Train and test")."""
    classes = np.unique(ytr)
    C = len(classes)
    mu = {c: Htr[ytr == c].mean(0) for c in classes}
    M = np.stack([mu[c] for c in classes])
    Mc = M - M.mean(0)
    SB = Mc.T @ Mc / C
    known = np.isin(yte, classes)
    R = Hte[known] - np.stack([mu[c] for c in yte[known]])
    SW = R.T @ R / known.sum()
    nc1_test = np.trace(SW @ np.linalg.pinv(SB)) / C
    tc = [c for c in classes if np.any(yte == c)]
    V = {c: np.mean(np.sum((Hte[yte == c] - mu[c]) ** 2, axis=1)) for c in tc}
    cdnv = np.mean([(V[a] + V[b]) / (2 * np.sum((mu[a] - mu[b]) ** 2)) for i, a in enumerate(tc) for b in tc[i + 1:]])
    D = np.stack([np.sum((Hte - mu[c]) ** 2, axis=1) for c in classes], axis=1)
    acc = np.mean(classes[np.argmin(D, axis=1)] == yte)
    return {"nc1_test": nc1_test, "nc1_cdnv_test": cdnv, "acc_ncc_test": acc}


@pytest.mark.parametrize("lacking", [False, True])
def test_heldout_collapse_matches_its_definition(tmp_path, lacking):
    rng = np.random.default_rng(7)
    C, d = 5, 6
    means = 3 * rng.normal(size=(C + 1, d)) + 4.0
    ytr = np.repeat(np.arange(C), 30)
    yte = np.repeat(np.arange(C + 1 if lacking else C), 12)  # class C: only in the test split
    Htr = means[ytr] + rng.normal(size=(len(ytr), d))
    Hte = means[yte] + 1.7 * rng.normal(size=(len(yte), d)) + 0.3  # wider, and shifted
    tr = nc_probe.write_store(tmp_path / "tr.safetensors", Htr, ytr)
    te = nc_probe.write_store(tmp_path / "te.safetensors", Hte, yte)
    train_metrics = nc_probe.analyze_features(Htr, ytr).metrics
    out, note = heldout_collapse(open_store(tr), open_store(te), train_metrics, chunk_rows=7)
    ref = reference(Htr, ytr, Hte, yte)
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, rel=1e-9), key
    assert out["nc1_test_ratio"] == pytest.approx(ref["nc1_test"] / train_metrics["nc1"], rel=1e-9)
    assert out["acc_ncc_test_ratio"] == pytest.approx(ref["acc_ncc_test"] / train_metrics["acc_ncc"], rel=1e-12)
    assert set(out) == set(TEST_KEYS)
    assert (note is not None) == lacking and (not lacking or "12 test rows of 1 classes" in note)


def test_parse_splits():
    assert parse_splits("train,test") == ["train", "test"] and parse_splits("test") is None
    for bad in ("train,test,all", "train,train", "train,"):
        with pytest.raises(InputError, match="split"):
            parse_splits(bad)


def test_cli_train_and_test_of_the_sample(tmp_path):
    res = CliRunner().invoke(app, ["analyze", "--split", "train,test", "--json", str(tmp_path / "s.json"),
                                   "--html", str(tmp_path / "s.html")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["labels"] == ["train", "test"]
    assert data["inputs"]["train"]["num_samples"] == 1347 and data["inputs"]["test"]["num_samples"] == 450
    rows = {r["metric"]: r["values"] for r in data["metrics"]}
    assert rows["nc1_test"]["train"] is None and rows["nc1_test"]["test"] > 5 * rows["nc1"]["train"]
    assert 0.95 < rows["acc_ncc_test"]["test"] <= 1 and "nc1_test_ratio" in res.output
    assert "nc1_test" in (tmp_path / "s.html").read_text()


@pytest.mark.parametrize("args, words", [
    (["--split", "train,test", "--out", "OUT"], "--out writes one split's report"),
    (["--split", "train,test,all"], "--split 'train,test,all' names 3 splits"),
])
def test_cli_bad_split_use_exits_2(tmp_path, args, words):
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    res = CliRunner().invoke(app, ["analyze", *args, "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 2 and words in res.output, res.output
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "o").exists()
