"""A report's tables (``Report.tidy``, ``Report.frame``, ``Report.per_class_frame``: the values the report holds,
checked against the features they came from) and their exports (csv, json, markdown, parquet, ``--format``)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import nc_probe
from nc_probe.cli.app import app
from nc_probe.core.errors import InputError
from nc_probe.metrics import CATALOG
from nc_probe.render import exports

NAMES = ["a|b", "<dog>", "car", "ship"]


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    C, d, n = 4, 8, 400
    centers = 3 * rng.normal(size=(C, d))
    y = rng.integers(0, C, n)
    H = centers[y] + 0.5 * rng.normal(size=(n, d))
    return H, y, centers


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory, features):
    H, y, centers = features
    path = tmp_path_factory.mktemp("feats") / "feats.safetensors"
    nc_probe.write_store(path, H, y, W=centers, class_names=NAMES)
    return path


@pytest.fixture(scope="module")
def report(feature_file):
    return nc_probe.analyze_file(feature_file)


# ------------------------------------------------------------------------- the report's tables
def test_tidy_holds_every_metric_with_its_catalog_entry(report, features):
    H, y, centers = features
    df = report.tidy()
    assert list(df.columns) == ["metric", "value", "unit", "direction", "word", "meaning"]
    assert df["metric"].tolist() == list(report.metrics)  # the report's order, one row each
    rows = df.set_index("metric")
    for key, value in report.metrics.items():
        got = rows.loc[key, "value"]
        assert math.isnan(got) if value is None else got == value, key
    # values checked against the features: nearest class mean accuracy, recomputed here
    means = np.stack([H[y == c].mean(0) for c in range(4)])
    ncc = np.argmin(((H[:, None, :] - means[None]) ** 2).sum(-1), 1)
    assert rows.loc["acc_ncc", "value"] == pytest.approx(np.mean(ncc == y), abs=1e-12)
    assert rows.loc["acc_model", "value"] == pytest.approx(np.mean(np.argmax(H @ centers.T, 1) == y), abs=1e-12)
    # direction, unit and word as docs/metrics.md states them (the catalog)
    assert tuple(rows.loc["angle_min_mean", ["unit", "direction", "word"]]) == ("degrees", "higher", "more separated")
    assert tuple(rows.loc["nc1", ["unit", "direction", "word"]]) == ("", "lower", "more collapsed")
    assert pd.isna(rows.loc["coding_rate_max", "direction"])  # no direction
    assert all(rows.loc[k, "meaning"] == CATALOG[k].doc for k in rows.index if k in CATALOG)


def test_tidy_and_frame_keep_null_metrics_as_nan(features):
    H, y, _ = features
    r = nc_probe.analyze_features(H, y)  # no classifier: the W metrics are null
    assert r.metrics["nc3"] is None
    tidy = r.tidy().set_index("metric")
    assert math.isnan(tidy.loc["nc3", "value"]) and tidy["value"].dtype == np.float64
    wide = r.frame()
    assert len(wide) == 1 and math.isnan(wide.loc[0, "nc3"])
    assert wide.loc[0, "nc1"] == r.metrics["nc1"]


def test_frame_is_one_row_per_report_and_concatenates(report, features):
    H, y, _ = features
    other = nc_probe.analyze_features(2 * H, y, eps2=1.0)
    table = pd.concat([report.frame(), other.frame()], ignore_index=True)
    assert table[["num_samples", "num_classes", "dim"]].values.tolist() == [[400, 4, 8], [400, 4, 8]]
    assert table.columns[:5].tolist() == ["source", "layer", "num_samples", "num_classes", "dim"]
    # nc1 is scale-invariant: the scaled features have the same value, as the two rows show
    assert table.loc[1, "nc1"] == pytest.approx(table.loc[0, "nc1"], rel=1e-9)
    assert table.loc[0, "rate_reduction"] == report.metrics["rate_reduction"]


def test_per_class_frame_matches_the_features(report, features):
    H, y, _ = features
    df = report.per_class_frame()
    assert df["class_id"].tolist() == [0, 1, 2, 3] and df["class_name"].tolist() == NAMES
    assert df["n"].tolist() == np.bincount(y).tolist()
    V = [np.mean(((H[y == c] - H[y == c].mean(0)) ** 2).sum(1)) for c in range(4)]  # V_c of docs/metrics.md
    np.testing.assert_allclose(df["within_class_variance"], V, rtol=1e-9)
    mu = np.stack([H[y == c].mean(0) for c in range(4)])
    centred = np.linalg.norm(mu - mu.mean(0), axis=1)  # ||m_c||, mu_G the mean of the class means
    np.testing.assert_allclose(df["mean_norm"], centred, rtol=1e-9)


def test_per_class_frame_leaves_uncomputed_subspaces_nan(features):
    H, y, _ = features
    r = nc_probe.analyze_features(H, y, classes=[1, 3])
    df = r.per_class_frame().set_index("class_id")
    assert df.loc[[0, 2], "rank_energy95"].isna().all() and df.loc[[1, 3], "rank_energy95"].notna().all()
    assert df.loc[1, "rank_numerical"] == r.per_class["rank_numerical"][0]


# ------------------------------------------------------------------------- exports
@pytest.mark.parametrize("fmt", ["csv", "json", "markdown"])
def test_text_exports_hold_every_metric(report, fmt, tmp_path):
    text = exports.report_text(report, fmt)
    for key in report.metrics:
        assert key in text
    written = exports.write_exports(report, tmp_path, fmt)
    suffix = exports.SUFFIX[fmt]
    assert sorted(p.name for p in written) == sorted(["report.json", f"metrics.{suffix}", f"per_class.{suffix}",
                                                      f"angles.{suffix}", f"pairs.{suffix}"])
    if fmt == "json":
        rows = json.loads((tmp_path / "metrics.json").read_text())
        assert {r["metric"]: r["value"] for r in rows}["nc1"] == pytest.approx(report.metrics["nc1"])
        assert all("nc2_etf_W" != r["metric"] or r["value"] is not None for r in rows)


def test_markdown_without_tabulate(report, monkeypatch):
    real = exports.importlib.util.find_spec
    monkeypatch.setattr(exports.importlib.util, "find_spec", lambda n: None if n == "tabulate" else real(n))
    table = exports.markdown_table(exports.frames(report)["per_class"])
    lines = table.splitlines()
    assert lines[0].startswith("| class_id") and re.fullmatch(r"\|[-:|]+\|", lines[1])
    assert len(lines) == 2 + 4 and len({line.count("|") - line.count("\\|") for line in lines}) == 1
    assert "a\\|b" in table  # a '|' in a class name does not break the table


def test_parquet_needs_pyarrow(report, feature_file, tmp_path, monkeypatch):
    real = exports.importlib.util.find_spec
    monkeypatch.setattr(exports.importlib.util, "find_spec", lambda n: None if n == "pyarrow" else real(n))
    with pytest.raises(InputError, match="pyarrow"):
        exports.write_exports(report, tmp_path, "parquet")
    res = CliRunner().invoke(app, ["analyze", str(feature_file), "--format", "parquet", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "pyarrow" in res.output


def test_parquet_round_trip(report, tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    exports.write_exports(report, tmp_path, "parquet")
    df = pd.read_parquet(tmp_path / "per_class.parquet")
    assert df["n"].tolist() == report.per_class["n"]


def test_cli_format_prints_tables_and_rejects_unknown(feature_file):
    runner = CliRunner()
    res = runner.invoke(app, ["analyze", str(feature_file), "--format", "markdown"])
    assert res.exit_code == 0 and "## metrics" in res.output and "| nc1 " in res.output
    res = runner.invoke(app, ["analyze", str(feature_file), "--format", "xml"])
    assert res.exit_code == 2 and "--format" in res.output
    res = runner.invoke(app, ["analyze", str(feature_file), "--format", "parquet"])  # binary: needs --out
    assert res.exit_code == 2
