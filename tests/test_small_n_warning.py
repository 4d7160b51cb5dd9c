"""Too few samples for the dimension (issue 18): with N <= d (or N - C < d) the covariances are singular and what
inverts them or counts their rank measures the sample size. The report says so, on every path that builds one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import nc_probe
from nc_probe.analysis.sample_size import sample_size_warnings
from nc_probe.cli.app import app

runner = CliRunner()
SMALL = "samples <= d="
BORDER = "N-C="


def _data(n: int, d: int, C: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    return 0.15 * rng.standard_normal((C, d))[y] + rng.standard_normal((n, d)), y


def _size_warnings(report) -> list[str]:
    return [w for w in report.warnings if SMALL in w or BORDER in w]


@pytest.mark.parametrize(("n", "C", "d", "kind"), [
    (50, 5, 64, SMALL), (64, 5, 64, SMALL),  # N <= d, the edge included
    (65, 2, 64, BORDER), (70, 10, 64, BORDER),  # N > d but N - C < d: Sigma_W is singular, Sigma_T is not
    (66, 2, 64, None), (5000, 5, 64, None)])  # N - C >= d: both covariances can be full rank
def test_the_thresholds_are_n_at_most_d_and_n_minus_c_below_d(n, C, d, kind):
    found = sample_size_warnings(n, C, d)
    if kind is None:
        assert found == []
        return
    (text,) = found
    assert kind in text and f"d={d}" in text and "lower-dimensional layer" in text
    assert (f"N={n} samples" in text) if kind == SMALL else (f"N-C={n - C}" in text and f"N={n}" in text)


def test_n_below_d_warns_and_the_figures_it_names_are_the_artefacts_it_says():
    H, y = _data(50, 64, 5)
    report = nc_probe.analyze_features(H, y)
    (text,) = _size_warnings(report)
    assert "N=50 samples <= d=64" in text and "N-1=49" in text and "N-C=45" in text
    for name in ("vci", "acc_ncc_mahalanobis", "rank_numerical_total"):
        assert name in text
    # what the warning claims, recomputed: 50 points span 49 centred dimensions, and Tr(Sigma_T^+ Sigma_B) = C-1
    assert report.metrics["rank_numerical_total"] == 49 == np.linalg.matrix_rank(H - H.mean(0))
    assert abs(report.metrics["vci"]) < 1e-9


def test_enough_samples_give_no_sample_size_warning():
    H, y = _data(5000, 64, 5)
    report = nc_probe.analyze_features(H, y)
    assert _size_warnings(report) == []
    assert report.metrics["rank_numerical_total"] == 64 and report.metrics["vci"] > 0.5


def test_n_minus_c_below_d_warns_about_the_within_class_inverse_only():
    H, y = _data(70, 64, 10)
    report = nc_probe.analyze_features(H, y)
    (text,) = _size_warnings(report)
    assert "N-C=60 < d=64" in text and "N=70 samples, C=10 classes" in text and SMALL not in text
    assert "acc_ncc_mahalanobis" in text and "rank_numerical_total" not in text  # Sigma_T has full rank here
    assert report.metrics["rank_numerical_total"] == 64
    # the within-class scatter of 70 rows about 10 means has rank 60: the pseudo-inverse sees 60 of 64 dimensions
    centred = H - np.stack([H[y == c].mean(0) for c in range(10)])[y]
    assert np.linalg.matrix_rank(centred) == 60


def test_classes_left_out_do_not_count():
    H, y = _data(68, 64, 5)
    y = y.copy()
    y[:3] = 7  # a class of 3 samples, left out below min_class_count=4: 65 samples of 5 classes are analysed
    report = nc_probe.analyze_features(H, y, min_class_count=4)
    (text,) = _size_warnings(report)
    assert "N-C=60 < d=64 (N=65 samples, C=5 classes)" in text


def test_streamed_statistics_warn_too():
    H, y = _data(50, 64, 5)
    stats = nc_probe.ClassStats(5, 64).update(torch.from_numpy(H), torch.from_numpy(y))
    (text,) = _size_warnings(nc_probe.report_from_stats(stats))
    assert "N=50 samples <= d=64" in text


def test_cli_analyze_shows_it_on_the_terminal_and_in_the_json(tmp_path):
    H, y = _data(50, 64, 5)
    np.savez(path := tmp_path / "small.npz", H=H, y=y)
    res = runner.invoke(app, ["analyze", str(path), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "N=50 samples <= d=64" in " ".join(res.output.split())
    saved = json.loads((tmp_path / "r.json").read_text())
    assert any("N=50 samples <= d=64" in w for w in saved["warnings"])


class WideThenNarrow(nn.Module):
    """A 64-wide layer (N=50 <= d) then a 4-wide one (N - C = 45 >= d): only the first should warn."""

    def __init__(self):
        super().__init__()
        self.stages = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 4))

    def forward(self, x):
        return self.stages(x)


def test_each_layer_warns_for_its_own_dimension():
    torch.manual_seed(0)
    x, y = torch.randn(50, 8), torch.arange(50) % 5
    report = nc_probe.analyze_layers(WideThenNarrow(), data=(x, y), layers="stages.*", device="cpu")
    by_name = {layer["name"]: layer.get("warnings") or [] for layer in report.layers}
    assert any("N=50 samples <= d=64" in w for w in by_name["stages.0"])
    assert not any(SMALL in w or BORDER in w for w in by_name["stages.1"])
