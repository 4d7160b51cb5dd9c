"""Rendering reports of many classes: above 100 classes the plots draw distributions of the class-pair values and the
most extreme pairs by name instead of C x C heatmaps, sorted lines instead of a bar per class; the HTML page and the
terminal stay small (summaries, the lowest and highest classes, a line saying how many were left out); the exports
take matrices as lists, numpy arrays or None; a report saved with its side file renders the same after loading.

Two reports: ``large``, analysed from random features (C=300, the matrices kept as numpy arrays), and ``summaries``,
built by hand like a C=5000 report whose matrices were not kept (``pairs`` summaries only)."""

from __future__ import annotations

import io
import json
import re
import warnings
from html import escape

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import AxesImage
from matplotlib.patches import StepPatch
from rich.console import Console

import nc_probe
from nc_probe.render import compare_plots, exports, html, pair_data, plots, tables
from nc_probe.render.terminal import render_report
from nc_probe.reports.compare import compare_reports

C_LARGE = 300
C_SUMMARY = 5000
ANGLE_CLASSES = 1000
LEVELS = ["0.01", "0.05", "0.25", "0.5", "0.75", "0.95", "0.99"]


@pytest.fixture(scope="module")
def large():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(C_LARGE), 3)
    H = rng.normal(size=(C_LARGE, 8))[y] + 0.3 * rng.normal(size=(len(y), 8))
    return nc_probe.analyze_features(H, y, class_names=[f"cls<{i:03d}>" for i in range(C_LARGE)])


@pytest.fixture(scope="module")
def large_figures(large):
    return plots.report_figures(large)


def _summary(lo, hi, kind, pool, names, count):
    """A pair summary as the analysis writes it: quantiles evenly between lo and hi, 20 top pairs from ``pool``."""
    q = {lv: lo + float(lv) * (hi - lo) for lv in LEVELS}
    values = np.linspace(lo, lo + 0.02 * (hi - lo), 20) if kind == "smallest" else np.linspace(hi, hi - 0.02 *
                                                                                               (hi - lo), 20)
    top = [{"a": pool[2 * i], "b": pool[2 * i + 1], "a_name": names[pool[2 * i]], "b_name": names[pool[2 * i + 1]],
            "value": float(v)} for i, v in enumerate(values)]
    return {"count": count, "mean": (lo + hi) / 2, "std": (hi - lo) / 4, "min": lo, "max": hi, "quantiles": q,
            "quantile_method": "histogram", "top_kind": kind, "top": top}


@pytest.fixture(scope="module")
def summaries():
    """A C=5000 report without matrices (settings matrices='never'): per-class lists (one a numpy array, one None),
    spectra as the side file holds them (a NaN-padded array), angles over the first 1000 classes, pair summaries."""
    rng = np.random.default_rng(1)
    C, d = C_SUMMARY, 8
    ids = list(range(C))
    names = [f"n{i:08d}" for i in ids]
    n = rng.integers(2, 50, C)
    spectrum = np.sort(rng.dirichlet(np.ones(d), C), axis=1)[:, ::-1].copy()
    spectrum[::7, 5:] = np.nan  # classes with shorter spectra
    per_class = {"class_ids": ids, "n": n.tolist(), "acc_model": None, "acc_ncc": rng.uniform(0, 1, C).tolist(),
                 "within_class_variance": rng.uniform(0.1, 1, C),  # a numpy array, as an in-memory report may hold
                 "mean_norm": rng.uniform(1, 2, C).tolist(), "mean_cosine": None, "pca2d": None,
                 "zero_features": [0] * C, "subspace_class_ids": ids,
                 **{k: rng.integers(1, d, C).tolist() for k in ("rank_energy95", "rank_energy99", "rank_numerical",
                                                                  "basis_dim")},
                 "rank_effective": rng.uniform(1, d, C).tolist(), "coding_rate_class": rng.uniform(0, 5, C).tolist(),
                 "spectrum": spectrum}
    m = ANGLE_CLASSES
    pairs = {"mean_cosine": _summary(-0.5, 0.9, "largest", ids[1000:], names, C * (C - 1) // 2),
             "cdnv": _summary(0.01, 2.0, "largest", ids[2000:], names, C * (C - 1) // 2),
             "angle_min": _summary(3.0, 89.0, "smallest", ids[500:], names, m * (m - 1) // 2),
             "subspace_affinity": _summary(0.0, 0.95, "largest", ids[600:], names, m * (m - 1) // 2)}
    metrics = {"nc1": 1.2, "nc1_cdnv": 0.1, "acc_ncc": 0.5, "coding_rate": 40.0, "coding_rate_within": 2.5,
               "rate_reduction": 37.5, "angle_min_mean": 46.0, "angle_min_min": 3.0, "coding_rate_max": 45.0}
    return nc_probe.Report(inputs={"source": "imagenet-like", "num_samples": int(n.sum()), "num_classes": C, "dim": d,
                                   "class_names": names, "class_ids": ids},
                           settings={"eps2": 0.5, "matrices": "never"}, metrics=metrics, per_class=per_class,
                           angles={"class_ids": ids[:m], "angle_min": None, "subspace_affinity": None}, pairs=pairs)


def _images(fig):
    return [a for ax in fig.axes for a in ax.get_children() if isinstance(a, AxesImage)]


def _upper(mat):
    mat = np.asarray(mat, dtype=float)
    return mat[np.triu_indices(len(mat), 1)]


def _labels(top):
    return [f"{t['a_name']} – {t['b_name']}" for t in top]


def _terminal(report) -> str:
    console = Console(width=100, record=True, color_system=None, file=io.StringIO())
    render_report(report, console)
    return console.export_text()


# ------------------------------------------------------------------------- plots
def test_the_view_switches_above_100_classes():
    def report(C):
        ids = list(range(C))
        return nc_probe.Report(inputs={"class_ids": ids}, settings={}, metrics={},
                               per_class={"class_ids": ids, "mean_cosine": np.eye(C)},
                               angles={"class_ids": ids, "angle_min": np.zeros((C, C)).tolist()})

    assert pair_data.pair_view(report(100), "angle_min") == pair_data.pair_view(report(100), "mean_cosine") == "heatmap"
    assert pair_data.pair_view(report(101), "angle_min") == pair_data.pair_view(report(101), "mean_cosine") == (
        "distribution")
    assert pair_data.pair_view(report(1), "angle_min") is None  # one class: no pairs
    assert pair_data.pair_view(report(101), "cdnv") is None  # no matrix and no summary


def test_large_report_draws_distributions_and_top_pairs(large, large_figures):
    assert set(large_figures) == {"metrics", "spectra", "angle_min", "mean_cosine", "subspace_affinity", "cdnv",
                                  "coding_rate", "pca2d"}
    assert not [name for name, fig in large_figures.items() if _images(fig)]  # no C x C image anywhere
    assert isinstance(large.angles["angle_min"], np.ndarray) and large.angles["angle_min"].shape == (300, 300)
    for key, mat in (("angle_min", large.angles["angle_min"]), ("mean_cosine", large.per_class["mean_cosine"]),
                     ("subspace_affinity", large.angles["subspace_affinity"])):
        ax_d, ax_t = large_figures[key].axes[:2]
        (step,) = [p for p in ax_d.patches if isinstance(p, StepPatch)]
        counts, edges = step.get_data().values, step.get_data().edges
        values = _upper(mat)
        assert counts.sum() == len(values) == C_LARGE * (C_LARGE - 1) // 2
        np.testing.assert_array_equal(counts, np.histogram(values, edges)[0])
        assert edges[0] == pytest.approx(values.min()) and edges[-1] == pytest.approx(values.max())
        mean_line = [ln for ln in ax_d.get_lines() if ln.get_label().startswith("mean")]
        assert mean_line[0].get_xdata()[0] == pytest.approx(large.pairs[key]["mean"])
        top = large.pairs[key]["top"]
        assert [t.get_text() for t in ax_t.get_yticklabels()] == _labels(top)
        np.testing.assert_allclose([p.get_width() for p in ax_t.patches], [t["value"] for t in top])
    # the pairs of the top list are the matrix's own extremes
    angle = large.angles["angle_min"]
    assert large.pairs["angle_min"]["top"][0]["value"] == pytest.approx(_upper(angle).min())
    etf = [ln.get_xdata()[0] for ln in large_figures["angle_min"].axes[0].get_lines() if "ETF" in ln.get_label()]
    assert etf == [pytest.approx(plots.etf_angle(C_LARGE))]


def test_large_per_class_views_are_sorted_lines_and_bands(large, large_figures):
    ax = large_figures["coding_rate"].axes[0]
    assert not ax.patches  # no bar per class
    (line,) = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2]
    np.testing.assert_allclose(line.get_ydata(), sorted(large.per_class["coding_rate_class"], reverse=True))
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, C_LARGE + 1))
    assert large.metrics["coding_rate_within"] in [ln.get_ydata()[0] for ln in ax.get_lines()]
    ax = large_figures["spectra"].axes[0]
    assert len(ax.get_lines()) == 1 and len(ax.collections) == 2  # the median and two bands, not 300 lines
    spec = plots.spectrum_array(large.per_class["spectrum"])
    with warnings.catch_warnings():  # components no class reaches: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), np.nanmedian(spec, axis=0))
    assert "300 classes" in ax.get_title()


def test_summary_only_report_draws_quantile_curves(summaries):
    figs = plots.report_figures(summaries)
    assert set(figs) == {"metrics", "spectra", "angle_min", "mean_cosine", "subspace_affinity", "cdnv",
                         "coding_rate"}
    assert not [name for name, fig in figs.items() if _images(fig)]
    for key, s in summaries.pairs.items():
        ax_d, ax_t = figs[key].axes[:2]
        (curve,) = [ln for ln in ax_d.get_lines() if ln.get_label() == "quantiles"]
        np.testing.assert_allclose(curve.get_xdata(), [s["min"]] + [s["quantiles"][lv] for lv in LEVELS] + [s["max"]])
        np.testing.assert_allclose(curve.get_ydata(), [0] + [float(lv) for lv in LEVELS] + [1])
        assert "matrix not kept" in ax_d.get_title() and f"{s['count']:,}" in ax_d.get_title()
        assert [t.get_text() for t in ax_t.get_yticklabels()] == _labels(s["top"])
    assert "1,000 of 5,000 classes" in " ".join(t.get_text() for t in figs["angle_min"].texts)
    # per-class spectra from the side file's NaN-padded array: bands over 5000 classes
    ax = figs["spectra"].axes[0]
    assert len(ax.get_lines()) == 1 and "5,000 classes" in ax.get_title()


def test_plot_files_stay_small(summaries, large_figures, tmp_path):
    written = plots.save_figures(large_figures, tmp_path / "large") + plots.save_plots(summaries, tmp_path / "sum")
    assert len(written) == 2 * (8 + 7)
    sizes = {p.relative_to(tmp_path).as_posix(): p.stat().st_size for p in written}
    assert max(sizes.values()) < 400_000, sizes
    svg = (tmp_path / "sum" / "angle_min.svg").read_text()
    assert "n00000500 – n00000501" in svg and "<image" not in svg


def test_pairs_of_a_matrix_without_a_summary(large):
    """A report with the matrix but no ``pairs`` (written before them): the top pairs come from the matrix."""
    old = nc_probe.Report.from_dict({**large.to_dict(), "pairs": {}})
    old.angles["angle_min"] = large.angles["angle_min"]
    ax_t = plots.angle_heatmap(old).axes[1]
    values = np.sort(_upper(large.angles["angle_min"]))[:20]
    np.testing.assert_allclose([p.get_width() for p in ax_t.patches], values)
    assert [t.get_text() for t in ax_t.get_yticklabels()] == _labels(large.pairs["angle_min"]["top"])


def test_comparison_of_large_reports_draws_one_curve_per_input(large, summaries):
    comparison = compare_reports({"a": large, "b": large})
    figs = compare_plots.comparison_figures(comparison)
    assert not [name for name, fig in figs.items() if _images(fig)]
    ax = figs["angle_min"].axes[0]
    curves = [ln for ln in ax.get_lines() if ln.get_label() in ("a", "b")]
    assert len(curves) == 2
    values = _upper(large.angles["angle_min"])
    for ln in curves:
        assert ln.get_xdata()[0] == pytest.approx(values.min()) and ln.get_xdata()[-1] == pytest.approx(values.max())
        assert ln.get_ydata()[-1] == pytest.approx(1)
        assert np.all(np.diff(ln.get_ydata()) >= 0)
    ax = figs["coding_rate"].axes[0]
    assert not ax.patches and len(ax.get_lines()) == 2
    fig = compare_plots.compare_heatmaps({"kept": large, "summary": summaries}, "mean_cosine")
    xs = {ln.get_label(): ln.get_xdata() for ln in fig.axes[0].get_lines()}
    np.testing.assert_allclose(xs["summary"][[0, -1]], [-0.5, 0.9])


# ------------------------------------------------------------------------- HTML
def test_html_stays_small_and_names_the_extreme_pairs(large, large_figures, summaries):
    for report, figures in ((large, large_figures), (summaries, None)):
        page = html.report_html(report, figures)
        C = report.inputs["num_classes"]
        assert len(page.encode()) < 2_000_000
        assert len(re.findall(r'<img src="data:image/png', page)) == (8 if figures else 7)
        for key, s in report.pairs.items():
            for t in s["top"]:
                assert f"<td>{escape(t['a_name'])}</td><td>{escape(t['b_name'])}</td>" in page, (key, t)
            assert f"<code>{key}</code>" in page
        section = page[page.index('id="per-class"'):page.index('id="pairs"')]
        assert section.count("<tr>") == 1 + 9 + 1 + 2 * html.EDGE_ROWS  # column summary, header, rows
        assert f"{C - 2 * html.EDGE_ROWS:,} classes left out" in section
        assert "the per-class CSV and the report JSON hold every class" in section
        # the lowest and the highest classes by accuracy
        acc = np.asarray(report.per_class["acc_ncc"], dtype=float)
        names = report.inputs["class_names"]
        for i in (int(np.argmin(acc)), int(np.argmax(acc))):
            assert f"<td>{escape(names[i])}</td>" in section
    assert "<td>histogram</td>" in page
    for lv in LEVELS:
        assert f"<th>{100 * float(lv):g}%</th>" in page
    assert "Class-distance normalized variance over all class pairs" in page  # the caption of a distribution


def test_html_of_a_small_report_is_unchanged_in_kind():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 200)
    report = nc_probe.analyze_features(3 * rng.normal(size=(4, 6))[y] + rng.normal(size=(200, 6)), y)
    page = html.report_html(report)
    assert "classes left out" not in page and "closest class subspaces" in page
    section = page[page.index('id="per-class"'):page.index('id="pairs"')]
    assert section.count("<tr>") == 1 + 4


# ------------------------------------------------------------------------- terminal
def test_terminal_prints_pairs_and_cuts_the_class_table(summaries, large):
    text = _terminal(summaries)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "Class pairs" in text
    for key, s in summaries.pairs.items():
        block = text[text.index(key + " "):]
        for t in s["top"][:5]:
            assert f"{t['a_name']} – {t['b_name']}" in block
        assert f"{s['top'][5]['a_name']} – " not in text  # five per quantity
        assert f"{s['count']:,} pairs" in text
    assert "4,980 of 5,000 classes left out of the table above" in text
    assert "per_class.csv" in text and "report JSON" in text
    acc = np.asarray(summaries.per_class["acc_ncc"])
    names = summaries.inputs["class_names"]
    order = np.argsort(acc, kind="stable")
    assert all(names[i] in text for i in (*order[:10], *order[-10:]))
    assert not any(names[i] in text.split("Per class")[1] for i in order[10:-10])
    assert "280 of 300 classes left out of the table above" in _terminal(large)


# ------------------------------------------------------------------------- exports
def test_exports_take_arrays_and_none(large, summaries, tmp_path):
    df = tables.per_class_frame(summaries)
    assert len(df) == C_SUMMARY and "acc_model" not in df.columns
    np.testing.assert_allclose(df["within_class_variance"], summaries.per_class["within_class_variance"])
    assert tables.angles_frame(summaries).empty
    pairs = tables.pairs_frame(summaries)
    assert len(pairs) == 4 * 20
    first = pairs[(pairs["quantity"] == "angle_min") & (pairs["rank"] == 1)].iloc[0]
    assert (first["class_a_name"], first["class_b_name"], first["value"]) == ("n00000500", "n00000501", 3.0)
    angles = tables.angles_frame(large)
    assert len(angles) == C_LARGE * (C_LARGE - 1) // 2
    np.testing.assert_allclose(angles["angle_min"], _upper(large.angles["angle_min"]))
    np.testing.assert_allclose(angles["subspace_affinity"], _upper(large.angles["subspace_affinity"]))
    written = exports.write_exports(summaries, tmp_path, "csv")
    assert sorted(p.name for p in written) == ["angles.csv", "metrics.csv", "pairs.csv", "per_class.csv",
                                               "report.json"]
    back = pd.read_csv(tmp_path / "pairs.csv")
    assert back.groupby("quantity")["rank"].max().to_dict() == {k: 20 for k in summaries.pairs}
    top = back[back["quantity"] == "cdnv"]
    assert top["class_a_name"].tolist() == [t["a_name"] for t in summaries.pairs["cdnv"]["top"]]
    assert len(pd.read_csv(tmp_path / "per_class.csv")) == C_SUMMARY


# ------------------------------------------------------------------------- round trip through the side file
def test_saved_and_loaded_large_report_renders_the_same(large, large_figures, tmp_path):
    path = large.save(tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["angles"]["angle_min"] is None and data["per_class"]["mean_cosine"] is None
    assert (tmp_path / "r.matrices.npz").is_file()
    loaded = nc_probe.Report.load(path)
    assert isinstance(loaded.angles["angle_min"], np.ndarray)
    assert isinstance(loaded.per_class["spectrum"], np.ndarray)  # NaN-padded rows
    figs = plots.report_figures(loaded)
    assert set(figs) == set(large_figures)
    for key in ("angle_min", "mean_cosine", "subspace_affinity"):
        a, b = (next(p for p in f[key].axes[0].patches if isinstance(p, StepPatch)) for f in (figs, large_figures))
        np.testing.assert_array_equal(a.get_data().values, b.get_data().values)
        np.testing.assert_allclose(a.get_data().edges, b.get_data().edges)
    np.testing.assert_allclose(figs["spectra"].axes[0].get_lines()[0].get_ydata(),
                               large_figures["spectra"].axes[0].get_lines()[0].get_ydata())
    assert _terminal(loaded).replace(str(path), "") == _terminal(large)
    page = html.report_html(loaded, figs)
    for t in large.pairs["angle_min"]["top"]:
        assert escape(t["a_name"]) in page
