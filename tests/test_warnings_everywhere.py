"""Every warning reaches every output (terminal, HTML, JSON of comparisons, splits, layers and trajectories); deltas
below a metric's resolution read "no change" and colours say a direction, not a judgement; true sentences about
the depth law and the accuracies through depth; names never cut; a saved layer report re-rendered without its model;
--help states defaults without stray " ." or "<bool>"; pages that fit a phone; accuracy and log axes."""

from __future__ import annotations

import colorsys
import io
import json
import math
import re

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

import nc_probe
from nc_probe.analysis.layer_compare import LayerComparison
from nc_probe.analysis.trajectory import Point, Trajectory
from nc_probe.cli.app import app
from nc_probe.render import html
from nc_probe.render.comparison import render_comparison
from nc_probe.render.layer_outputs import layers_html, layers_table, render_layer_comparison, render_layers
from nc_probe.render.plots import accuracy_axis, figure_bytes, plain_log_ticks
from nc_probe.render.terminal import modules_table
from nc_probe.render.trajectory_outputs import trajectory_html, trajectory_table
from nc_probe.reports.compare import Comparison, compare_reports, resolution
from nc_probe.reports.layer_report import LAW_FIT_R2, LayerReport

runner = CliRunner()


def _report(seed: int, warning: str | None = None, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    C, d, n = 3, 12, 90  # 30 samples per class, fewer than 5 * d: a warning every report shares
    y = np.arange(n) % C
    H = 4 * rng.normal(size=(C, d))[y] + spread * rng.normal(size=(n, d))
    r = nc_probe.analyze_features(H, y)
    if warning:
        r.warnings.append(warning)
    return r


@pytest.fixture(scope="module")
def two():
    """Two reports, each with a warning of its own, and the warnings both share (few samples per class)."""
    return {"old": _report(0, "OLD-ONLY warning"), "new": _report(1, "NEW-ONLY warning", spread=0.5)}


def _text(render, *args, width=160, **kwargs) -> str:
    console = Console(width=width, record=True, color_system=None)
    render(*args, console, **kwargs)
    return console.export_text()


# ------------------------------------------------------------------------------------------------ compare
def test_each_inputs_warnings_reach_terminal_html_and_json(two, tmp_path):
    shared = set(two["old"].warnings) & set(two["new"].warnings)
    assert shared, "the fixture's reports should share a warning"
    c = compare_reports(two)
    text = _text(render_comparison, c)
    assert "old: OLD-ONLY warning" in text and "new: NEW-ONLY warning" in text
    for w in shared:  # once, with both labels
        assert text.count(w[:40]) == 1 and f"old, new: {w[:40]}" in text
    page = html.comparison_html(c, figures={})
    assert "old: OLD-ONLY warning" in page and "new: NEW-ONLY warning" in page and 'id=warnings' in page
    data = json.loads(c.save(tmp_path / "c.json").read_text())
    assert "old: OLD-ONLY warning" in data["warnings"] and "new: NEW-ONLY warning" in data["warnings"]
    assert "OLD-ONLY warning" in data["input_warnings"]["old"] and "NEW-ONLY warning" in data["input_warnings"]["new"]


def test_cli_compare_warns_on_stderr_per_input(two, tmp_path):
    paths = [two[k].save(tmp_path / f"{k}.json") for k in ("old", "new")]
    res = runner.invoke(app, ["compare", f"old={paths[0]}", f"new={paths[1]}", "--no-cka", "--html",
                              str(tmp_path / "c.html"), "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    assert "warning: old: OLD-ONLY warning" in res.stderr and "warning: new: NEW-ONLY warning" in res.stderr
    assert "OLD-ONLY" not in res.stdout  # the table on stdout stays clean
    assert "old: OLD-ONLY warning" in (tmp_path / "c.html").read_text()
    assert "new: NEW-ONLY warning" in json.loads((tmp_path / "c.json").read_text())["warnings"]


def test_a_delta_below_the_resolution_is_no_change(two):
    old, new = two["old"], two["new"]
    new = nc_probe.Report.from_dict(json.loads(json.dumps(new.to_dict())))
    new.metrics["nc1"] = 1.0
    old = nc_probe.Report.from_dict(json.loads(json.dumps(old.to_dict())))
    old.metrics["nc1"] = 1.0 + 1e-12
    new.metrics["unc3"], old.metrics["unc3"] = 1.895e-06, 2.052e-06  # the train/test case of the issue
    new.metrics["angle_min_min"], old.metrics["angle_min_min"] = 17.3, 78.9
    c = compare_reports({"old": old, "new": new})
    rows = {r["metric"]: r for r in c.rows}
    for key in ("nc1", "unc3"):
        assert rows[key]["changed"]["new"] is False and rows[key]["moved"]["new"] is None, key
        assert rows[key]["deltas"]["new"] != 0  # the JSON keeps the number
    assert rows["angle_min_min"]["changed"]["new"] is True and rows["angle_min_min"]["moved"]["new"] is False
    text = _text(render_comparison, c)
    assert re.search(r"│ nc1 .*no change", text) and re.search(r"│ unc3 .*no change", text)
    assert "more collapsed" not in next(line for line in text.splitlines() if line.startswith("│ unc3 "))
    assert re.search(r"│ angle_min_min .*less separated", text)
    assert "not better or worse" in text  # the colour legend
    page = html.comparison_html(c, figures={})
    assert re.search(r'<td class="num same">no change</td>', page)
    assert re.search(r'<td class="num less">-61.6 less separated</td>', page)
    assert resolution(1.0, 1.0) == pytest.approx(1e-6) and resolution(0.0, 0.0, "acc_ncc") == 1e-9


def _greenish(hex_colour: str) -> bool:
    """A saturated hue between yellow-green and cyan-green: what reads as "good"."""
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    hue, saturation, _ = colorsys.rgb_to_hsv(r, g, b)
    return 75 <= hue * 360 <= 165 and saturation > 0.25


def test_colours_say_the_direction_not_a_judgement(two):
    """Every "more <word>" change has one colour, every "less <word>" another, "no change" a third, whether the
    word is collapsed, separated or compressed; none of them green, in the terminal and on the page."""
    old, new = (nc_probe.Report.from_dict(json.loads(json.dumps(two[k].to_dict()))) for k in ("old", "new"))
    old.metrics.update(nc1=1.0, angle_min_mean=40.0, angle_min_min=78.9)
    new.metrics.update(nc1=0.1, angle_min_mean=60.0, angle_min_min=17.3)  # more collapsed, more and less separated
    c = compare_reports({"old": old, "new": new})
    console = Console(width=200, record=True, color_system="truecolor", file=io.StringIO())
    render_comparison(c, console)
    spans = re.findall(r'<span style="color: (#[0-9a-f]{6})[^"]*">\s*[-+0-9.e]*\s*(more|less|no) (\w+)',
                       console.export_html(inline_styles=True))
    page = html.comparison_html(c, figures={})
    cells = re.findall(r'<td class="num (\w+)">[^<]*?(more|less|no) (\w+)</td>', page)
    css = dict(re.findall(r"\.(more|less|same) \{ color: (#[0-9a-f]{6})", page))
    for colours in ({kind: colour for colour, kind, _ in spans}, {kind: css[cls] for cls, kind, _ in cells}):
        assert set(colours) == {"more", "less", "no"} and len(set(colours.values())) == 3, colours
        assert not any(_greenish(c) for c in colours.values()), colours
    for found in ({(kind, colour) for colour, kind, _ in spans}, {(kind, cls) for cls, kind, _ in cells}):
        assert len(found) == 3, found  # one colour per direction, whatever the word
    assert {word for _, kind, word in spans if kind == "more"} >= {"collapsed", "separated"}


def test_split_comparison_warns_per_split():
    res = runner.invoke(app, ["analyze", "sample:ce", "--split", "train,test", "--limit", "300"])
    assert res.exit_code == 0, res.output
    assert re.search(r"warning: train, test: .*fewer than", res.stderr), res.stderr
    assert "Δ test" in res.stdout and "warning" not in res.stdout


# ------------------------------------------------------------------------------------------------ layers
def _layer_report(ncc, D, warnings=None, name="m") -> LayerReport:
    reports = []
    for i, (a, dl) in enumerate(zip(ncc, D)):
        r = nc_probe.Report(inputs={"num_classes": 10, "num_samples": 500}, settings={"eps2": 0.5},
                            metrics={"nc1": dl / 10, "acc_ncc": a, "acc_linear_probe": 1.0},
                            per_class={}, warnings=list((warnings or {}).get(i, [])))
        reports.append(({"name": f"features.block{i}.a_very_long_module_name_{'x' * 10}_{i}", "dim": 64,
                         "pool": "gap"}, r))
    inputs = {"source": f"/models/{name}.pt", "num_samples": 500, "num_classes": 10, "data": "val/",
              "split": "val", "layers": "@blocks", "pool": "auto"}
    return LayerReport.from_reports(reports, inputs, {"eps2": 0.5, "rank_tol": 1e-6, "device": "cpu"})


FALLING = _layer_report([1.0, 0.97, 0.9, 0.82], [1.0, 0.2, 3.0, 0.5],
                        warnings={0: ["small classes"], 1: ["small classes"], 2: ["small classes", "LAYER2 only"],
                                  3: ["small classes"]})


def test_plateau_sentence_says_a_falling_accuracy_falls():
    text = _text(render_layers, FALLING)
    line = " ".join(text.split())
    assert "NCC accuracy peaks at 1 at layer 1" in line and "falls after it, to 0.82 at layer 4" in line
    assert "NCC accuracy gains no more" not in line
    assert FALLING.plateau_text("acc_ncc").startswith("peak 1") and "falls to 0.82" in FALLING.plateau_text("acc_ncc")
    flat = _layer_report([0.5, 0.9, 0.995, 0.999], [4, 2, 1, 0.5])
    flat_line = " ".join(_text(render_layers, flat).split())
    assert "NCC accuracy gains no more than 1 point after layer 3" in flat_line
    rising = _layer_report([0.5, 0.7, 0.9], [4, 2, 1])
    assert "no plateau" in " ".join(_text(render_layers, rising).split())


def test_a_poor_depth_law_fit_is_said_to_be_one():
    assert FALLING.laws["D_l"]["r2"] < LAW_FIT_R2 and FALLING.law_fits() is False
    line = " ".join(_text(render_layers, FALLING).split())
    assert "does not fit well" in line and "not a rate" in line
    good = _layer_report([1, 1, 1], [4.0, 2.0, 1.0])
    assert good.law_fits() is True and "does not fit" not in " ".join(_text(render_layers, good).split())
    comparison = LayerComparison({"bad": FALLING, "good": good})
    text = _text(render_layer_comparison, comparison, width=200)
    assert re.search(r"│ bad .*\*", text) and not re.search(r"│ good .* \* ", text)


def test_layer_warnings_everywhere_once_per_text(tmp_path):
    text = _text(render_layers, FALLING)
    assert text.count("small classes") == 1 and "every layer: small classes" in text
    assert "features.block2.a_very_long_module_name_xxxxxxxxxx_2: LAYER2 only" in " ".join(text.split())
    page = layers_html({"m": FALLING}, {})
    assert page.count("every layer: small classes") == 1 and "LAYER2 only" in page
    for shown in ("samples N", "500", "val/", "eps2", "@blocks", "separation fuzziness", "NCC accuracy peaks"):
        assert shown in page, shown
    comparison = LayerComparison({"a": FALLING, "b": _layer_report([1, 1], [2.0, 1.0], {0: ["B warning"]})})
    data = json.loads(comparison.save(tmp_path / "lc.json").read_text())
    assert "a: every layer: small classes" in data["warnings"] and "b: m" not in data["warnings"]
    assert any(w.startswith("b: ") and "B warning" in w for w in data["warnings"])
    text = _text(render_layer_comparison, comparison)
    assert "a: every layer: small classes" in text and "B warning" in text
    saved = json.loads(FALLING.save(tmp_path / "l.json").read_text())
    assert saved["layers"][2]["warnings"] == ["small classes", "LAYER2 only"]


def test_a_saved_layer_report_is_rendered_again_without_the_model(tmp_path):
    path = FALLING.save(tmp_path / "l.json")
    res = runner.invoke(app, ["layers", str(path), "--plots", str(tmp_path / "p"), "--html", str(tmp_path / "l.html"),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert {"fuzziness.png", "accuracy.png", "accuracy.svg"} <= {p.name for p in (tmp_path / "p").iterdir()}
    assert "NCC accuracy peaks" in (tmp_path / "l.html").read_text()
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["layers.csv", "layers.json"]
    assert "NCC" in res.stdout and "warning: every layer: small classes" in res.stderr
    res = runner.invoke(app, ["layers", str(path), "--eps2", "1", "--quiet"])
    assert res.exit_code == 0 and "--eps2 ignored" in res.stderr and res.stdout == ""
    single = _report(0).save(tmp_path / "single.json")
    res = runner.invoke(app, ["layers", str(single)])
    assert res.exit_code == 2 and "single-layer report" in res.output


class Stages(nn.Module):
    def __init__(self):
        super().__init__()
        self.stages = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU())
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.stages(x))


def test_only_an_asked_for_penultimate_warns_about_itself():
    torch.manual_seed(0)
    x, y = torch.randn(60, 4), torch.arange(60) % 3
    asked = nc_probe.analyze_layers(Stages(), data=(x, y), layers="stages.3,@penultimate", device="cpu")
    assert any("@penultimate" in w for w in asked.warnings)
    default = nc_probe.analyze_layers(Stages(), data=(x, y), device="cpu")
    assert not any("@penultimate" in w for w in default.warnings)


# --------------------------------------------------------------------------------------------- names
def test_long_module_names_are_never_cut_on_a_narrow_console():
    names = [f"encoder.layers.{'deep_' * 8}block.attention.output.dense_{s}" for s in ("query", "value")]
    rows = [{"name": n, "type": "Linear", "output_shape": [768], "params": 590592, "default_tap": False,
             "layer_tap": True} for n in names]
    for table, width in ((modules_table(rows, "m"), 50), (layers_table(_layer_report([1, 1], [2, 1])), 80)):
        console = Console(width=width, record=True, color_system=None)
        console.print(table)
        text = console.export_text()
        assert "…" not in text
        cells = "".join(line.split("│")[1 if table.columns[0].header == "module" else 2].strip()
                        for line in text.splitlines() if line.count("│") > 3)
        wanted = names if table.columns[0].header == "module" else _layer_report([1, 1], [2, 1]).names
        for n in wanted:
            assert n in cells, (n, cells)


def test_inspect_image_size_sets_the_example_input():
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.pool(self.conv(x)).flatten(1))

    from nc_probe.analysis.inspection import inspect_checkpoint

    rows = {r["name"]: r for r in inspect_checkpoint(Conv(), image_size=40)}
    assert rows["conv"]["output_shape"] == [4, 40, 40]
    with pytest.raises(nc_probe.InputError, match="image model"):
        inspect_checkpoint(Stages(), image_size=40)
    res = runner.invoke(app, ["inspect", "sample:deep", "--image-size", "8"])
    assert res.exit_code == 2 and "--image-size" in res.output


# ---------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("command", [[], ["analyze"], ["compare"], ["inspect"], ["layers"], ["trajectory"],
                                     ["gate"], ["baseline"]])
def test_help_states_defaults_without_stray_marks(command):
    res = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert res.exit_code == 0, res.output
    out = res.output
    stray = re.compile(r" \.(?=\s|│|$)")  # a sentence ending in " ." (a default dropped before the full stop)
    assert not stray.search(out) and "<bool>" not in out, [line for line in out.splitlines()
                                                           if stray.search(line) or "<bool>" in line]
    if command in (["analyze"], ["compare"], ["layers"], ["trajectory"], ["gate"]):
        assert "[default: 0.5]" in out and "[default: 256]" in out  # --eps2, --batch-size
    if command == ["inspect"]:
        assert "--image-size" in out and "[default:" in out


# ---------------------------------------------------------------------------------------------- pages
WIDTH = re.compile(r"(?<![-\w])(min-)?width\s*:\s*(\d+)px")


def _pages(two) -> dict[str, str]:
    traj = Trajectory([Point("e1", "e1.pt", 1.0, "file name", {"data": two["old"]}),
                       Point("e2", "e2.pt", 2.0, "file name", {"data": two["new"]})], {"eps2": 0.5})
    return {"report": html.report_html(two["old"], figures={}),
            "comparison": html.comparison_html(compare_reports(two), figures={}),
            "layers": layers_html({"m": FALLING}, {}), "trajectory": trajectory_html(traj, {})}


def test_pages_fit_a_phone(two):
    for name, page in _pages(two).items():
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page, name
        fixed = [int(m.group(2)) for m in WIDTH.finditer(page)]
        assert all(w <= 400 for w in fixed), (name, fixed)
        assert not re.search(r"<(img|table)[^>]*\swidth=", page), name
        assert "@media (max-width" in page and "img { max-width: 100%" in page
        # every table scrolls inside its own box
        assert page.count("<table") == page.count('<div class="wide-scroll"><table') + page.count(
            '<div class="scroll"><table'), name


def test_trajectory_page_and_caption_say_only_what_ran(two):
    traj = Trajectory([Point("e1", "e1.pt", 1.0, "file name", {"data": two["old"]}),
                       Point("e2", "e2.pt", 2.0, "file name", {"data": two["new"]})], {"eps2": 0.5})
    text = _text(lambda t, console: console.print(trajectory_table(t)), traj)
    assert "test" not in text
    page = trajectory_html(traj, {})
    assert "e1: OLD-ONLY warning" in page and "e2: NEW-ONLY warning" in page
    shared = (set(two["old"].warnings) & set(two["new"].warnings)).pop()
    assert f"every checkpoint: {shared}" in page


# ---------------------------------------------------------------------------------------------- axes
def test_accuracy_axes_stop_at_one():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    ax.plot([1, 2, 3], [0.95, 1.0, 1.0], marker="o")
    accuracy_axis(ax)
    lo, hi = ax.get_ylim()
    assert 1.0 < hi < 1.005 and lo >= 0.9
    assert max(ax.get_yticks()) <= 1.0 + 1e-12 and all(t >= 0 for t in ax.get_yticks())


def test_a_log_axis_within_a_decade_has_plain_labels():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    ax.plot([1, 2, 3], [1.2, 2.03, 3.5])
    ax.set_yscale("log")
    plain_log_ticks(fig)
    figure_bytes(fig, "png")  # draws it: the labels are set
    labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels()]
    assert any(lab for lab in labels), labels
    assert not any("10^" in lab or "times" in lab or "\\mathdefault" in lab for lab in labels if lab), labels
    wide = Figure()
    ax2 = wide.add_subplot()
    ax2.plot([1, 2], [1e-4, 1.0])
    ax2.set_yscale("log")
    plain_log_ticks(wide)
    assert not isinstance(ax2.yaxis.get_major_formatter(), type(ax.yaxis.get_major_formatter()))
    assert math.isfinite(ax2.get_ylim()[0])


def test_comparison_type_still_builds_by_hand(two):
    c = Comparison(reports=two, rows=[])
    assert c.all_warnings() and c.to_dict()["input_warnings"]["old"]
