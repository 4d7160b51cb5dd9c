"""``compare``: linear CKA, the side-by-side table with deltas and collapse directions, class-set checks, and the
CLI with 2 and 3 inputs of mixed kinds (feature files, report JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

import nc_probe
from nc_probe.analysis.compare_inputs import parse_specs
from nc_probe.cli.app import app
from nc_probe.core.errors import InputError
from nc_probe.metrics.cka import cka_matrix, linear_cka
from nc_probe.render import compare_plots
from nc_probe.render.comparison import delta_text, render_comparison
from nc_probe.reports.compare import Comparison, compare_reports


def _cka_reference(X, Y):
    """Kornblith et al.'s HSIC form on N x N Gram matrices (small N only)."""
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    K, L = X @ X.T, Y @ Y.T
    return float((K * L).sum() / (np.linalg.norm(K) * np.linalg.norm(L)))


def _orthogonal(rng, d):
    Q, R = np.linalg.qr(rng.normal(size=(d, d)))
    return Q * np.sign(np.diag(R))


# ------------------------------------------------------------------------- linear CKA
def test_cka_matches_the_gram_form_and_is_chunk_independent():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 7)) + 5
    Y = X @ rng.normal(size=(7, 4)) + 0.5 * rng.normal(size=(300, 4))
    ref = _cka_reference(X, Y)
    for rows in (None, 1, 37, 300):
        assert linear_cka(X, Y, chunk_rows=rows) == pytest.approx(ref, rel=1e-10)
    assert linear_cka(X, X) == pytest.approx(1, rel=1e-12)
    assert linear_cka(X, rng.normal(size=(300, 5))) < 0.2


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-3, 1e3), shift=st.floats(-1e3, 1e3),
       rows=st.integers(1, 200))
def test_cka_invariant_to_rotation_scaling_and_shift(seed, scale, shift, rows):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(120, 6)) * rng.uniform(0.1, 3, size=6)
    Y = np.tanh(X @ rng.normal(size=(6, 5)))
    base = linear_cka(X, Y)
    assert linear_cka(X, X, chunk_rows=rows) == pytest.approx(1, abs=1e-9)
    assert linear_cka(X, scale * X @ _orthogonal(rng, 6) + shift, chunk_rows=rows) == pytest.approx(1, abs=1e-7)
    assert linear_cka(scale * X @ _orthogonal(rng, 6), Y, chunk_rows=rows) == pytest.approx(base, abs=1e-8)


def test_cka_reads_feature_stores_in_chunks(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 5)).astype(np.float32)
    Y = (X @ rng.normal(size=(5, 3))).astype(np.float32)
    y = rng.integers(0, 3, 500)
    a = nc_probe.open_store(nc_probe.write_store(tmp_path / "a.safetensors", X, y))
    b = nc_probe.open_store(nc_probe.write_store(tmp_path / "b.safetensors", Y, y))
    m = cka_matrix([a, b, X], chunk_rows=64)
    assert m[0, 1] == pytest.approx(_cka_reference(X.astype(float), Y.astype(float)), rel=1e-9)
    assert m[0, 2] == pytest.approx(1)
    with pytest.raises(InputError, match="same samples"):
        linear_cka(X, Y[:10])


# ------------------------------------------------------------------------- comparison table
def _features(seed, spread, C=4, d=8, n=400):
    rng = np.random.default_rng(seed)
    centers = 3 * np.random.default_rng(99).normal(size=(C, d))
    y = np.random.default_rng(98).integers(0, C, n)  # the same samples and labels in every run
    return centers[y] + spread * rng.normal(size=(n, d)), y, centers


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two runs of the 'same samples' (loose and tight classes), a report JSON of the loose one, and a run on
    different classes."""
    tmp = tmp_path_factory.mktemp("cmp")
    out = {}
    for name, spread in (("loose", 1.0), ("tight", 0.1)):
        H, y, W = _features(0, spread)
        out[name] = nc_probe.write_store(tmp / f"{name}.safetensors", H, y, W=W)
    out["json"] = nc_probe.analyze_file(out["loose"]).save(tmp / "loose.json")
    H, y, W = _features(0, 1.0, C=3)
    out["three"] = nc_probe.write_store(tmp / "three.safetensors", H, y, W=W)
    return out


@pytest.fixture(scope="module")
def reports(files):
    return {k: nc_probe.analyze_file(files[k]) for k in ("loose", "tight")}


def test_deltas_and_directions(reports):
    c = compare_reports(reports)
    rows = {r["metric"]: r for r in c.rows}
    nc1 = rows["nc1"]
    assert nc1["direction"] == "lower"
    assert nc1["deltas"]["tight"] == pytest.approx(reports["tight"].metrics["nc1"] - reports["loose"].metrics["nc1"])
    assert nc1["word"] == "more collapsed"
    assert nc1["moved"]["tight"] is True  # tighter classes: lower nc1, more collapsed
    assert rows["coding_rate_max"]["direction"] is None and rows["coding_rate_max"]["moved"]["tight"] is None
    assert rows["acc_ncc"]["direction"] == "higher" and rows["acc_ncc"]["word"] == "more accurate"
    mean95 = rows["rank_energy95 (mean)"]
    assert mean95["values"]["loose"] == pytest.approx(np.mean(reports["loose"].per_class["rank_energy95"]))
    assert mean95["word"] == "more compressed" and mean95["moved"]["tight"] is True
    df = c.frame()
    assert list(df.columns[:5]) == ["metric", "direction", "word", "loose", "tight"] and "delta_tight" in df.columns


def test_terminal_table_names_the_collapse_direction(reports):
    c = compare_reports(reports)
    console = Console(width=140, record=True, color_system=None)
    render_comparison(c, console)
    text = console.export_text()
    assert "Δ tight" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("│ nc1 "))
    assert "↓" in line and " more collapsed" in line and "-0." in line


def test_epoch_samples_read_the_right_way():
    """The README's e1 -> e300 comparison: every metric's word says what training did. Measured (train split):
    nc1 0.34 -> 0.0062, ranks 3.9 -> 1, angle_min_mean up, coding_rate_within down."""
    c = nc_probe.analysis.compare_inputs.compare_inputs(["e1=sample:ce_epoch1", "e300=sample:ce_epoch300"], cka=False)
    rows = {r["metric"]: r for r in c.rows}

    def said(key):
        r = rows[key]
        return delta_text(r["deltas"]["e300"], r["moved"]["e300"], r["word"]).split(" ", 1)[1]

    assert said("nc1") == "more collapsed" and said("nc3") == "more collapsed"
    assert said("rank_energy95 (mean)") == "more compressed"
    assert said("coding_rate_within") == "more compressed"
    assert said("angle_min_mean") == "more separated"
    assert said("acc_model") == "more accurate"
    for r in c.rows:  # no metric is read as "less collapsed" when the model collapsed further
        assert r["word"] != "more collapsed" or r["metric"].startswith("nc2_") or r["moved"]["e300"] is not False, r


def test_different_class_sets_are_an_error(files, reports):
    three = nc_probe.analyze_file(files["three"])
    with pytest.raises(InputError, match="different class sets.*only in loose: 3"):
        compare_reports({"loose": reports["loose"], "three": three})
    res = CliRunner().invoke(app, ["compare", f"a={files['loose']}", f"b={files['three']}"])
    assert res.exit_code == 2 and "different class sets" in res.output


def test_needs_two_inputs_and_unique_labels(reports, files):
    with pytest.raises(InputError, match="at least 2"):
        compare_reports({"loose": reports["loose"]})
    with pytest.raises(InputError, match="twice"):
        parse_specs([f"a={files['loose']}", f"a={files['tight']}"])
    assert list(parse_specs([str(files["loose"])])) == ["loose"]
    res = CliRunner().invoke(app, ["compare", f"a={files['loose']}"])
    assert res.exit_code == 2


def test_cka_between_feature_files_with_the_same_samples(files, reports):
    c = compare_reports(reports, features={"loose": files["loose"], "tight": files["tight"]})
    H1, _, _ = _features(0, 1.0)
    H2, _, _ = _features(0, 0.1)
    assert c.cka["labels"] == ["loose", "tight"]
    assert c.cka["matrix"][0][1] == pytest.approx(linear_cka(H1, H2), rel=1e-5)
    assert c.cka["matrix"][0][0] == 1.0


def test_cli_two_inputs_feature_file_and_report_json(files, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["compare", f"tight={files['tight']}", f"old={files['json']}", "--json",
                                   str(out / "c.json"), "--html", str(out / "c.html"), "--plots", str(out / "plots")])
    assert res.exit_code == 0, res.output
    assert "tight" in res.output and "Δ old" in res.output
    data = json.loads((out / "c.json").read_text())
    assert data["labels"] == ["tight", "old"] and data["baseline"] == "tight"
    assert data["cka"] is None  # a report JSON carries no features
    assert {r["metric"] for r in data["metrics"]} >= {"nc1", "rate_reduction", "angle_min_mean"}
    page = (out / "c.html").read_text()
    for key, value in nc_probe.Report.load(files["json"]).metrics.items():
        if value is not None:  # a metric null in every input has no row (e.g. bias_collapse without b)
            assert f"<code>{key}</code>" in page
    assert page.count('src="data:image/png;base64,') == 5
    names = {p.name for p in (out / "plots").iterdir()}
    assert names == {f"{v}.{ext}" for v in ("metrics", "spectra", "angle_min", "mean_cosine", "coding_rate")
                     for ext in ("png", "svg")}


def test_cli_three_inputs_with_cka(files, tmp_path):
    res = CliRunner().invoke(app, ["compare", f"loose={files['loose']}", f"tight={files['tight']}",
                                   f"old={files['json']}", "--json", str(tmp_path / "c.json"), "-q"])
    assert res.exit_code == 0, res.output
    assert res.stdout == ""  # -q: no table; the warnings still go to stderr
    assert "warning: no CKA for old" in res.stderr
    assert "warning: loose, old: 5 of 6 class pairs" in res.stderr  # each input's, once, labelled
    data = json.loads((tmp_path / "c.json").read_text())
    m = data["cka"]["matrix"]
    assert m[0][1] == pytest.approx(m[1][0]) and 0.5 < m[0][1] < 1 and m[2] == [None, None, None]
    assert any("no CKA for old" in w for w in data["warnings"])
    assert [r["values"]["loose"] for r in data["metrics"]] == [r["values"]["old"] for r in data["metrics"]]


def test_comparison_figures_carry_each_input(reports):
    c = Comparison(reports=reports, rows=compare_reports(reports).rows,
                   cka={"labels": ["loose", "tight"], "matrix": [[1.0, 0.8], [0.8, 1.0]]})
    figs = compare_plots.comparison_figures(c)
    spectra = figs["spectra"].axes[0]
    assert spectra.get_yscale() == "log"
    assert [t.get_text() for t in spectra.get_legend().get_texts()] == ["loose (mean over classes)",
                                                                        "tight (mean over classes)"]
    heat = figs["angle_min"]
    images = [ax.get_images()[0] for ax in heat.axes if ax.get_images()]
    assert [ax.get_title() for ax in heat.axes if ax.get_images()] == ["loose", "tight"]
    for im, rep in zip(images, reports.values()):
        np.testing.assert_allclose(im.get_array(), rep.angles["angle_min"])
        assert im.get_clim() == (0, 90)
    bars = figs["metrics"].axes[0]
    legend = figs["metrics"].legends[0]  # the figure's, outside the panels: it covers no bar
    assert bars.get_yscale() == "log" and [t.get_text() for t in legend.get_texts()] == ["loose", "tight"]
    np.testing.assert_allclose(figs["cka"].axes[0].get_images()[0].get_array(), [[1, 0.8], [0.8, 1]])


def _hsic_u(K, L):
    n = len(K)
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))


@pytest.mark.parametrize("chunk", [3, 7, 1000])
def test_unbiased_cka_matches_the_gram_formula_in_any_chunking(chunk):
    from nc_probe.metrics.cka import unbiased_cka_matrix

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 12)) + 3.0
    Y = X @ rng.normal(size=(12, 5)) + 2 * rng.normal(size=(30, 5))
    K, L = X @ X.T, Y @ Y.T
    ref = _hsic_u(K, L) / np.sqrt(_hsic_u(K, K) * _hsic_u(L, L))
    m = unbiased_cka_matrix([X, Y, X * 2.5 + 7.0], chunk_rows=chunk)
    assert m[0, 1] == pytest.approx(ref, rel=1e-9)
    assert m[0, 2] == pytest.approx(1.0, rel=1e-12) and np.allclose(np.diag(m), 1.0)  # self-CKA, scale, shift
    assert np.array_equal(m, unbiased_cka_matrix([X, Y, X * 2.5 + 7.0], chunk_rows=chunk))  # deterministic


def test_unbiased_cka_does_not_drift_with_few_samples():
    from nc_probe.metrics.cka import cka_matrix, unbiased_cka_matrix

    rng = np.random.default_rng(1)
    X, Z = rng.normal(size=(40, 60)), rng.normal(size=(40, 60))  # independent: the true CKA is 0
    assert cka_matrix([X, Z])[0, 1] > 0.5  # the biased estimator's known bias at N ~ d
    assert abs(unbiased_cka_matrix([X, Z])[0, 1]) < 0.1


def test_cli_unbiased_cka(files, tmp_path):
    res = CliRunner().invoke(app, ["compare", f"tight={files['tight']}", f"loose={files['loose']}",
                                   "--unbiased-cka", "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    cka = json.loads((tmp_path / "c.json").read_text())["cka"]
    assert cka["estimator"] == "unbiased" and "unbiased HSIC" in res.output
    assert cka["matrix"][0][0] == 1.0 and -1 < cka["matrix"][0][1] < 1
