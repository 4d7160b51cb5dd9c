"""Plots of a report: each figure carries its title, axis labels, colour scale and the report's data (checked on the
matplotlib objects, not on pixels); and the analysis entries they draw from (mean_cosine, pca2d)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import PathCollection

import nc_probe
from nc_probe.render import plots

NAMES = ["cat", "dog", "car", "ship"]


def _data(seed=0, C=4, d=8, n=500, spread=0.3):
    rng = np.random.default_rng(seed)
    centers = 3 * rng.normal(size=(C, d))
    y = rng.integers(0, C, n)
    H = centers[y] + spread * rng.normal(size=(n, d))
    W = centers + 0.5 * rng.normal(size=(C, d))
    return H, y, W


@pytest.fixture(scope="module")
def report():
    H, y, W = _data()
    return nc_probe.analyze_features(H, y, W, class_names=NAMES)


@pytest.fixture(scope="module")
def figures(report):
    return plots.report_figures(report)


def _images(fig):
    return [im for ax in fig.axes for im in ax.get_images()]


def _colorbar_labels(fig):
    # colour bars are extra axes whose label sits on the long axis
    return {ax.get_ylabel() for ax in fig.axes} | {ax.get_xlabel() for ax in fig.axes}


def test_every_view_is_drawn(figures):
    assert set(figures) == {"metrics", "spectra", "angle_min", "mean_cosine", "coding_rate", "pca2d"}


def test_metric_overview_shows_the_metrics(report, figures):
    fig = figures["metrics"]
    assert "NC metric overview" in " ".join(t.get_text() for t in fig.texts)
    ax_nc, ax_rate, ax_ang = fig.axes[:3]
    assert ax_nc.get_title() == "Neural collapse NC1-NC4" and ax_nc.get_xscale() == "log"
    assert "0 = collapsed" in ax_nc.get_xlabel()
    keys = [t.get_text() for t in ax_nc.get_yticklabels()]
    assert keys[:2] == ["nc1", "nc1_cdnv"] and "nc4" in keys
    widths = [p.get_width() for p in ax_nc.patches]
    floor = plots.log_floor([report.metrics[k] for k in keys])
    np.testing.assert_allclose(widths, [max(report.metrics[k], floor) for k in keys])
    heights = [p.get_height() for p in ax_rate.patches]
    np.testing.assert_allclose(heights, [report.metrics[k] for k in plots.RATE_KEYS])
    assert ax_rate.get_ylabel() == "nats" and "Coding rates" in ax_rate.get_title()
    assert report.metrics["coding_rate_max"] in [ln.get_ydata()[0] for ln in ax_rate.get_lines()]
    np.testing.assert_allclose([p.get_height() for p in ax_ang.patches],
                               [report.metrics[k] for k in plots.ANGLE_KEYS])
    assert ax_ang.get_ylabel() == "degrees"
    refs = sorted(ln.get_ydata()[0] for ln in ax_ang.get_lines())
    np.testing.assert_allclose(refs, [np.degrees(np.arccos(1 / 3)), 90])  # ETF angle for C=4, orthogonal


def test_spectra_one_log_line_per_class(report, figures):
    ax = figures["spectra"].axes[0]
    assert ax.get_yscale() == "log" and "spectra" in ax.get_title()
    assert "component" in ax.get_xlabel() and "lambda" in ax.get_ylabel()
    lines = ax.get_lines()
    assert len(lines) == len(report.per_class["subspace_class_ids"])
    for line, spec in zip(lines, report.per_class["spectrum"]):
        y = np.asarray(line.get_ydata(), dtype=float)
        keep = np.asarray(spec) > plots.SPECTRUM_FLOOR
        np.testing.assert_allclose(y[: len(spec)][keep], np.asarray(spec)[keep])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == NAMES


def test_angle_heatmap_holds_angle_min(report, figures):
    fig = figures["angle_min"]
    (im,) = _images(fig)
    np.testing.assert_allclose(im.get_array(), report.angles["angle_min"])
    assert im.get_clim() == (0, 90)
    assert "smallest principal angle (degrees)" in _colorbar_labels(fig)
    ax = fig.axes[0]
    assert "principal angle" in ax.get_title() and ax.get_xlabel() == "class" and ax.get_ylabel() == "class"
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES


def test_mean_cosine_beside_etf_target(report, figures):
    fig = figures["mean_cosine"]
    left, right = _images(fig)
    np.testing.assert_allclose(left.get_array(), report.per_class["mean_cosine"])
    target = np.asarray(right.get_array())
    np.testing.assert_allclose(np.diag(target), 1)
    np.testing.assert_allclose(target[~np.eye(4, dtype=bool)], -1 / 3)
    assert left.get_clim() == right.get_clim() == (-1, 1)
    assert "cosine" in _colorbar_labels(fig)
    assert "ETF" in fig.axes[1].get_title() and "Class-mean cosines" in fig.axes[0].get_title()


def test_coding_rate_bars(report, figures):
    ax = figures["coding_rate"].axes[0]
    np.testing.assert_allclose([p.get_height() for p in ax.patches], report.per_class["coding_rate_class"])
    assert ax.get_ylabel() == "R_c (nats)" and ax.get_xlabel() == "class" and "coding rate" in ax.get_title()
    assert report.metrics["coding_rate_within"] in [ln.get_ydata()[0] for ln in ax.get_lines()]


def test_pca_scatter_coloured_by_class(report, figures):
    ax = figures["pca2d"].axes[0]
    pca = report.per_class["pca2d"]
    cols = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(cols) == 4  # one per class, with a legend
    pts = np.asarray(pca["points"])
    labels = np.asarray(pca["labels"])
    for c, cls in zip(cols, report.per_class["class_ids"]):
        np.testing.assert_allclose(c.get_offsets(), pts[labels == cls])
    assert ax.get_xlabel().startswith("PC1 (") and ax.get_ylabel().startswith("PC2 (")
    assert "PCA" in ax.get_title()


def test_many_classes_get_a_colour_bar_not_a_legend():
    rng = np.random.default_rng(3)
    C, d = 12, 6
    y = rng.integers(0, C, 400)
    H = 3 * rng.normal(size=(C, d))[y] + rng.normal(size=(400, d))
    rep = nc_probe.analyze_features(H, y)
    fig = plots.spectra_plot(rep)
    assert fig.axes[0].get_legend() is None and len(fig.axes) == 2  # the colour bar
    fig = plots.pca_plot(rep)
    assert fig.axes[0].get_legend() is None and len(fig.axes) == 2


def test_views_without_data_are_left_out(report):
    data = report.to_dict()
    for key in ("pca2d", "mean_cosine", "spectrum"):
        data["per_class"].pop(key)
    data["angles"] = {"class_ids": [], "angle_min": None, "subspace_affinity": None}
    data.pop("pairs")  # a report from before the pair summaries
    old = nc_probe.Report.from_dict(data)
    assert set(plots.report_figures(old)) == {"metrics", "coding_rate"}
    # the same report with its pair summaries: their distributions stand in for the heatmaps
    summaries = nc_probe.Report.from_dict({**data, "pairs": report.pairs})
    figs = plots.report_figures(summaries)
    assert set(figs) == {"metrics", "coding_rate", "angle_min", "mean_cosine"}
    assert not [im for ax in figs["angle_min"].axes for im in ax.get_images()]


def test_save_plots_png_and_svg(report, tmp_path):
    figs = {"coding_rate": plots.coding_rate_plot(report), "angle_min": plots.angle_heatmap(report)}
    written = plots.save_figures(figs, tmp_path / "plots")
    assert sorted(p.name for p in written) == ["angle_min.png", "angle_min.svg", "coding_rate.png",
                                               "coding_rate.svg"]
    assert (tmp_path / "plots" / "coding_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "plots" / "angle_min.svg").read_text()
    assert "<svg" in svg and "principal angle" in svg
    assert not list((tmp_path / "plots").glob(".*"))  # no temp files left


# ------------------------------------------------------------------------- the report entries the plots need
def test_mean_cosine_is_the_centered_mean_cosine_matrix(report):
    H, y, _ = _data()
    means = np.stack([H[y == c].mean(0) for c in range(4)])
    M = means - means.mean(0)
    U = M / np.linalg.norm(M, axis=1, keepdims=True)
    np.testing.assert_allclose(report.per_class["mean_cosine"], U @ U.T, atol=1e-10)


def test_mean_cosine_of_a_simplex_etf(etf):
    C = 5
    means = 4 * etf(C, 12)
    y = np.repeat(np.arange(C), 20)
    rng = np.random.default_rng(0)
    rep = nc_probe.analyze_features(means[y] + 1e-3 * rng.normal(size=(len(y), 12)), y)
    cos = np.asarray(rep.per_class["mean_cosine"])
    np.testing.assert_allclose(cos, plots.etf_target(C), atol=1e-3)


def test_pca2d_is_a_deterministic_projection_of_a_subsample():
    H, y, _ = _data(seed=1, n=2600)
    a = nc_probe.analyze_features(H, y, chunk_rows=300).per_class["pca2d"]
    b = nc_probe.analyze_features(H, y, chunk_rows=1000).per_class["pca2d"]
    assert len(a["points"]) == len(a["labels"]) == 2000 == a["num_samples"]
    np.testing.assert_allclose(a["points"], b["points"], rtol=1e-4, atol=1e-6)
    assert a["labels"] == b["labels"]
    rows = np.sort(np.random.default_rng(a["seed"]).choice(len(H), 2000, replace=False))
    assert a["labels"] == y[rows].tolist()
    # the projection onto the top-2 principal axes of all rows (up to the sign of each axis)
    X = H - H.mean(0)
    _, s, Vt = np.linalg.svd(X, full_matrices=False)
    ref = X[rows] @ Vt[:2].T
    got = np.asarray(a["points"])
    np.testing.assert_allclose(np.abs(got), np.abs(ref), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(a["explained_variance_ratio"], (s**2 / (s**2).sum())[:2], rtol=1e-6)


def test_pca2d_keeps_every_row_of_a_small_set():
    H, y, _ = _data(n=150)
    p = nc_probe.analyze_features(H, y).per_class["pca2d"]
    assert len(p["points"]) == 150 and sorted(p["labels"]) == sorted(y.tolist())
