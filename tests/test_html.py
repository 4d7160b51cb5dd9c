"""The HTML report (self-contained, every metric key, every plot embedded; checked in headless Chromium when it is
installed) and the terminal summary's expectation column. The tables and their --format exports: test_exports.py."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

import nc_probe
from nc_probe.cli.app import app
from nc_probe.render import html, plots
from nc_probe.render.terminal import render_report

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    C, d, n = 4, 8, 400
    centers = 3 * rng.normal(size=(C, d))
    y = rng.integers(0, C, n)
    H = centers[y] + 0.5 * rng.normal(size=(n, d))
    path = tmp_path_factory.mktemp("feats") / "feats.safetensors"
    nc_probe.write_store(path, H, y, W=centers, class_names=["a|b", "<dog>", "car", "ship"])
    return path


@pytest.fixture(scope="module")
def report(feature_file):
    return nc_probe.analyze_file(feature_file)


@pytest.fixture(scope="module")
def page(report):
    return html.report_html(report)


def test_page_holds_every_metric_key_and_plot(report, page):
    for key in report.metrics:
        assert f"<code>{key}</code>" in page, key
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    names = set(plots.report_figures(report))
    assert len(imgs) == len(names) == 6
    for name in names:
        assert f'id="plot-{name}"' in page
    assert all(base64.b64decode(b)[:4] == b"\x89PNG" for b in imgs)


def test_page_is_self_contained(report, page):
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from anywhere
    assert "<script" not in page
    assert report.inputs["sha256"] in page and str(report.inputs["source"]) in page
    for key in report.settings:
        assert f"<code>{key}</code>" in page
    # names are escaped, never markup
    assert "&lt;dog&gt;" in page and "<dog>" not in page


def test_analyze_writes_html_and_plots(feature_file, tmp_path):
    res = CliRunner().invoke(app, ["analyze", str(feature_file), "--html", str(tmp_path / "r.html"),
                                   "--plots", str(tmp_path / "plots"), "-q"])
    assert res.exit_code == 0, res.output
    assert "nc1_cdnv" in (tmp_path / "r.html").read_text()
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == sorted(f"{n}.{ext}" for n in ("metrics", "spectra", "angle_min", "mean_cosine",
                                                    "coding_rate", "pca2d") for ext in ("png", "svg"))


def _chromium(*args, tmp_path):
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# CI installs Chromium and sets NC_PROBE_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping.
@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("NC_PROBE_REQUIRE_BROWSER"),
                    reason="needs Chromium (apt-get install -y chromium)")
def test_page_renders_in_headless_chromium(report, page, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(page)
    res = _chromium("--dump-dom", path.as_uri(), tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert "<h1>nc-probe report</h1>" in dom
    for key in report.metrics:
        assert f"<code>{key}</code>" in dom, key
    assert dom.count('src="data:image/png;base64,') == 6
    shot = tmp_path / "shot.png"
    res = _chromium("--screenshot=" + str(shot), "--window-size=1200,2400", "--hide-scrollbars", path.as_uri(),
                    tmp_path=tmp_path)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    from matplotlib.image import imread

    img = imread(shot)
    assert img.shape[:2] == (2400, 1200)
    assert img[..., :3].std() > 0.05  # drawn, not a blank page


# ------------------------------------------------------------------------- terminal summary
def test_summary_has_expectation_column_and_fits_100_columns(report):
    console = Console(width=100, record=True, color_system=None)
    render_report(report, console)
    text = console.export_text()
    assert "collapsed / MCR^2" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    assert re.search(r"nc1 .*0 / large", text)
    assert re.search(r"angle_min_mean .*~71 / ~90", text)  # arccos(1/3) for C=4
