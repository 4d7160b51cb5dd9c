"""Malformed JSON inputs (reports, baselines, layer reports, gate TOML files) and resume caches: every one is refused
with one line naming the file and what to do (exit 2), or read as the well-formed input it is (exit 0); never a
traceback, never a raw escape sequence on the terminal, never a hang on a pipe.

The files are made here from a small synthetic analysis (N=240, d=8, C=4), so the table runs in seconds."""

from __future__ import annotations

import copy
import json
import os
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

import nc_probe
from nc_probe.cli.app import app
from nc_probe.core.errors import InputError
from nc_probe.reports import gate as g
from nc_probe.reports.layer_report import LayerReport
from nc_probe.reports.report import Report

runner = CliRunner()
ESC = "\x1b[2J\x1b[31m"


def _features(seed=0, n=240, d=8, C=4):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    means = rng.normal(size=(C, d)) * 3
    return means[y] + 0.5 * rng.normal(size=(n, d)), y, means, np.zeros(C)


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # gate reads ./pyproject.toml; the repository's own must not take part


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A report, its JSON data, a layer report's data and a baseline's data, all well formed."""
    root = tmp_path_factory.mktemp("good")
    H, y, W, b = _features()
    report = nc_probe.analyze_features(H, y, W, b, class_names=["cat", "dog", "eel", "fox"])
    report.save(root / "good.json")
    layers = LayerReport.from_reports(
        [({"name": f"blocks.{i}", "shape": [8], "pool": "none", "raw_dim": 8, "dim": 8, "projection_seed": None},
          nc_probe.analyze_features(*_features(seed=i)[:2])) for i in range(3)],
        {"source": "net.pt", "num_classes": 4, "class_names": ["cat", "dog", "eel", "fox"]}, {"eps2": 0.5})
    layers.save(root / "layers.json")
    return {"root": root, "report": report, "json": root / "good.json", "data": json.loads(report.to_json()),
            "layers": json.loads(layers.to_json()), "layers_json": root / "layers.json",
            "baseline": json.loads(json.dumps(g.make_baseline(report).to_dict()))}


def _set(data, path, value):
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _drop(data, *keys):
    for key in keys:
        data.pop(key, None)


# (name, what it starts from, how it is changed, exit code: 0 read as given, 2 refused)
REPORTS = [
    ("json list", "report", lambda d: [1, 2], 2),
    ("missing metrics", "report", lambda d: _drop(d, "metrics"), 2),
    ("missing inputs and settings", "report", lambda d: _drop(d, "inputs", "settings"), 0),
    ("schema 2.0", "report", lambda d: _set(d, ["schema_version"], "2.0"), 2),
    ("schema as a number", "report", lambda d: _set(d, ["schema_version"], 1.1), 2),
    ("schema 1.0 of the first reports", "report",
     lambda d: (_drop(d, "pairs", "matrices_file"), _drop(d["per_class"], "mean_cosine", "pca2d"),
                _set(d, ["schema_version"], "1.0")), 0),
    ("metrics a list", "report", lambda d: _set(d, ["metrics"], [1, 2]), 2),
    ("metric nested", "report", lambda d: _set(d, ["metrics", "nc1"], {"a": {"b": 1}}), 2),
    ("metric 10**400", "report", lambda d: _set(d, ["metrics", "nc1"], 10**400), 2),
    ("metric -10**400", "report", lambda d: _set(d, ["metrics", "rate_reduction"], -10**400), 2),
    ("metric a string", "report", lambda d: _set(d, ["metrics", "nc1"], "0.1"), 2),
    ("metric a list", "report", lambda d: _set(d, ["metrics", "nc1"], [0.1]), 2),
    ("metric name with escapes", "report", lambda d: _set(d, ["metrics", ESC + "evil\nline"], 1.0), 2),
    ("metric of a newer version", "report", lambda d: _set(d, ["metrics", "nc9_future"], 0.5), 0),
    ("inputs a string", "report", lambda d: _set(d, ["inputs"], "x"), 2),
    ("settings a list", "report", lambda d: _set(d, ["settings"], [1]), 2),
    ("eps2 an object", "report", lambda d: _set(d, ["settings", "eps2"], {"x": 1}), 2),
    ("num_classes text", "report", lambda d: _set(d, ["inputs", "num_classes"], "ten"), 2),
    ("class names with escapes", "report",
     lambda d: _set(d, ["inputs", "class_names"], [ESC + f"c{i}\r\n" for i in range(4)]), 0),
    ("class names objects", "report", lambda d: _set(d, ["inputs", "class_names"], [{"a": i} for i in range(4)]), 2),
    ("class names too few", "report", lambda d: _set(d, ["inputs", "class_names"], ["a"]), 2),
    ("class ids objects", "report", lambda d: _set(d, ["per_class", "class_ids"], [{"a": i} for i in range(4)]), 2),
    ("source with escapes", "report", lambda d: _set(d, ["inputs", "source"], ESC + "/x\nsecond line"), 0),
    ("source of 5 MB", "report", lambda d: _set(d, ["inputs", "source"], "A" * 5_000_000), 2),
    ("per_class a string", "report", lambda d: _set(d, ["per_class"], "x"), 2),
    ("per_class empty", "report", lambda d: _set(d, ["per_class"], {}), 0),
    ("per_class column short", "report", lambda d: _set(d, ["per_class", "acc_ncc"], [1.0]), 2),
    ("per_class column of text", "report", lambda d: _set(d, ["per_class", "rank_energy95"], ["x"] * 4), 2),
    ("per_class spectrum flat", "report", lambda d: _set(d, ["per_class", "spectrum"], [1.0] * 4), 2),
    ("pca2d points text", "report", lambda d: _set(d, ["per_class", "pca2d"], {"points": "x", "labels": 5}), 2),
    ("angles ragged", "report", lambda d: _set(d, ["angles", "angle_min"], [[1.0, 2.0], [3.0]]), 2),
    ("warnings a string", "report", lambda d: _set(d, ["warnings"], "oops"), 2),
    ("warnings nested", "report", lambda d: _set(d, ["warnings"], [{"a": 1}]), 2),
    ("warnings with escapes", "report", lambda d: _set(d, ["warnings"], ["\x1b]0;title\x07 hi\nline 2", ESC]), 0),
    ("pairs count text", "report", lambda d: _set(d, ["pairs", "mean_cosine", "count"], "many"), 2),
    ("pairs top not pairs", "report", lambda d: _set(d, ["pairs", "mean_cosine", "top"], [1, "x"]), 2),
    ("timings text", "report", lambda d: _set(d, ["timings", "total"], "slow"), 2),
    ("matrices_file /etc/passwd", "report", lambda d: _set(d, ["matrices_file"], "/etc/passwd"), 2),
    ("matrices_file ../x.npz", "report", lambda d: _set(d, ["matrices_file"], "../x.npz"), 2),
    ("matrices_file a number", "report", lambda d: _set(d, ["matrices_file"], 5), 2),
    ("matrices_file not there", "report", lambda d: _set(d, ["matrices_file"], "gone.npz"), 0),
    ("a layer report", "layers", lambda d: None, 2),
    ("a baseline", "baseline", lambda d: None, 0),
    ("baseline metrics a list", "baseline", lambda d: _set(d, ["metrics"], [0.1, 0.2]), 2),
    ("baseline metrics lists", "baseline", lambda d: d.update(metrics={k: [v] for k, v in d["metrics"].items()}), 2),
    ("baseline metric 10**400", "baseline", lambda d: _set(d, ["metrics", "nc1"], 10**400), 2),
    ("baseline num_classes text", "baseline", lambda d: _set(d, ["inputs", "num_classes"], ESC), 2),
]
TEXTS = [  # files that are not JSON data of the right kind
    ("not JSON", "{not json", 2),
    ("NaN token", '{"schema_version": "1.1", "metrics": {"nc1": NaN}}', 2),
    ("digits beyond Python's limit", '{"schema_version": "1.1", "metrics": {"nc1": 1' + "0" * 5000 + "}}", 2),
    ("nested 100000 deep", "[" * 100_000 + "]" * 100_000, 2),
    ("not UTF-8", b"\xff\xfe\x00garbage", 2),
]
COMMANDS = {
    "analyze": lambda p, good: ["analyze", p],
    "compare": lambda p, good: ["compare", f"a={p}", f"b={good}"],
    "gate": lambda p, good: ["gate", p, "--rule", "nc1<=10"],
    "gate --baseline": lambda p, good: ["gate", good, "--baseline", p, "--rule", "nc1<=baseline+10%"],
}


def _write(path, variant, good):
    name, start, change, code = variant
    data = copy.deepcopy(good[{"report": "data", "layers": "layers", "baseline": "baseline"}[start]])
    changed = change(data)
    path.write_text(json.dumps(data if changed is None or not isinstance(changed, list) else changed))
    return code


def _check(result, path, code):
    out = result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out and "\x1b" not in out
    assert result.exit_code == code, out[-2000:]
    if code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and (path is None or str(path) in lines[0]), lines


#: Where a command answers a variant otherwise: (exit code, whether the line names the file). Compared with a
#: report, a layer report has no single-layer metrics, and a baseline no classes: refused by the other input's name.
OTHERWISE = {("a layer report", "compare"): (2, False), ("a baseline", "compare"): (2, False)}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("variant", REPORTS, ids=[v[0] for v in REPORTS])
def test_malformed_reports_and_baselines(variant, command, good, tmp_path):
    path = tmp_path / "R.json"
    code = _write(path, variant, good)
    code, named = OTHERWISE.get((variant[0], command), (code, True))
    result = runner.invoke(app, [str(a) for a in COMMANDS[command](path, good["json"])], env={"COLUMNS": "100"})
    _check(result, path if named else None, code)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("name, text, code", TEXTS, ids=[t[0] for t in TEXTS])
def test_files_that_are_not_report_json(name, text, code, command, good, tmp_path):
    path = tmp_path / "R.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    result = runner.invoke(app, [str(a) for a in COMMANDS[command](path, good["json"])])
    _check(result, path, code)


def test_escapes_in_a_report_are_shown_not_sent(good, tmp_path):
    data = copy.deepcopy(good["data"])
    data["inputs"]["class_names"] = [ESC + f"c{i}" for i in range(4)]
    data["warnings"] = ["\x1b]0;title\x07 hi\nsecond line"]
    (tmp_path / "R.json").write_text(json.dumps(data))
    result = runner.invoke(app, ["analyze", str(tmp_path / "R.json")])
    assert result.exit_code == 0 and "\x1b" not in result.stdout and "\\x1b[2J" in result.stdout


def test_the_messages_name_the_field_and_the_fix(good, tmp_path):
    for field, value, words in ((["metrics", "nc1"], [0.1], "metrics.nc1 is a list, not a number"),
                                (["metrics", "nc1"], 10**400, "metrics.nc1 is an integer too large for a float"),
                                (["per_class", "acc_ncc"], [1.0], "per_class.acc_ncc has 1 entries for 4 classes"),
                                (["matrices_file"], "/etc/passwd", "'/etc/passwd' is not the bare name of a .npz"),
                                (["metrics", ESC], 1.0, "'\\x1b[2J\\x1b[31m', which is not a metric name")):
        data = copy.deepcopy(good["data"])
        _set(data, field, value)
        (tmp_path / "R.json").write_text(json.dumps(data))
        with pytest.raises(InputError) as e:
            Report.load(tmp_path / "R.json")
        assert words in str(e.value) and "nc-probe analyze --json" in str(e.value), str(e.value)
        assert "\n" not in str(e.value) and "\x1b" not in str(e.value)


# ---------------------------------------------------------------------------------------------- the side file
def _side(tmp_path, good, **arrays):
    data = copy.deepcopy(good["data"])
    data["angles"]["angle_min"], data["matrices_file"] = None, "R.matrices.npz"
    (tmp_path / "R.json").write_text(json.dumps(data))
    if arrays:
        np.savez(tmp_path / "R.matrices.npz", **arrays)
    return tmp_path / "R.json"


def test_side_file_is_read_with_its_shapes_checked(good, tmp_path):
    angle = np.asarray(good["report"].angles["angle_min"])
    back = Report.load(_side(tmp_path, good, angle_min=angle))
    np.testing.assert_array_equal(back.angles["angle_min"], angle)
    for arrays, words in (({"angle_min": np.zeros(3)}, "shape (3,)"),
                          ({"angle_min": np.array([["a"] * 4] * 4)}, "not a 4 x 4 matrix"),
                          ({"angle_min": np.array([{"a": 1}], dtype=object)}, "angle_min with dtype object")):
        with pytest.raises(InputError, match="matrices_file") as e:
            Report.load(_side(tmp_path, good, **arrays))
        assert words in str(e.value), str(e.value)
    (tmp_path / "R.matrices.npz").write_text("not a zip")
    with pytest.raises(InputError, match="is not a readable .npz archive"):
        Report.load(tmp_path / "R.json")
    (tmp_path / "R.matrices.npz").unlink()
    (tmp_path / "R.matrices.npz").mkdir()
    with pytest.raises(InputError, match="R.matrices.npz: is a folder, not a matrices"):
        Report.load(tmp_path / "R.json")


# ---------------------------------------------------------------------------------------------- layer reports
LAYERS = [
    ("well formed", lambda d: None, 0),
    ("layers not objects", lambda d: _set(d, ["layers"], [1, 2]), 2),
    ("layer metric nested", lambda d: _set(d, ["layers", 0, "metrics", "D_l"], {"a": 1}), 2),
    ("layer metric 10**400", lambda d: _set(d, ["layers", 0, "metrics", "D_l"], 10**400), 2),
    ("layer name a number", lambda d: _set(d, ["layers", 0, "name"], 5), 2),
    ("layer name with escapes", lambda d: _set(d, ["layers", 0, "name"], ESC + "blk\n"), 0),
    ("layer without depth", lambda d: d["layers"][0].pop("depth"), 2),
    ("laws text", lambda d: _set(d, ["laws"], "x"), 2),
    ("law rho text", lambda d: _set(d, ["laws", "D_l", "rho"], "x"), 2),
    ("no law", lambda d: _set(d, ["laws", "D_l"], None), 0),
    ("plateau depth a list", lambda d: _set(d, ["laws", "plateau_acc_ncc"], {"depth": [1]}), 2),
    ("cka not a matrix", lambda d: d.update(cka={"layers": 1, "matrix": "x"}), 2),
    ("layer warnings nested", lambda d: _set(d, ["layers", 0, "warnings"], [{"a": 1}]), 2),
    ("inputs a string", lambda d: _set(d, ["inputs"], "x"), 2),
]


@pytest.mark.parametrize("name, change, code", LAYERS, ids=[v[0] for v in LAYERS])
def test_malformed_layer_reports(name, change, code, good, tmp_path):
    data = copy.deepcopy(good["layers"])
    change(data)
    path = tmp_path / "L.json"
    path.write_text(json.dumps(data))
    plots = ["--plots", str(tmp_path / "p")] if name == "no law" else []  # the depth plots without a fitted law
    result = runner.invoke(app, ["compare", f"a={path}", f"b={good['layers_json']}", *plots])
    _check(result, path, code)
    assert not plots or (tmp_path / "p" / "fuzziness.png").is_file()


# ---------------------------------------------------------------------------------------------- gate TOML
TOMLS = [
    ("rules a number", "[tool.nc-probe.gate]\nrules = 5\n", "rules must be a list of strings"),
    ("rules numbers", "[tool.nc-probe.gate]\nrules = [1, 2]\n", "rules must be a list of strings"),
    ("baseline a number", '[tool.nc-probe.gate]\nrules = ["nc1<=1"]\nbaseline = 5\n', "baseline must be a path"),
    ("baseline empty", '[tool.nc-probe.gate]\nrules = ["nc1<=baseline"]\nbaseline = ""\n', "baseline must be a path"),
    ("baseline with NUL", '[tool.nc-probe.gate]\nrules = ["nc1<=1"]\nbaseline = "a\\u0000b"\n',
     "baseline must be a path"),
    ("baseline a folder", '[tool.nc-probe.gate]\nrules = ["nc1<=baseline"]\nbaseline = "sub"\n', "sub: is a folder"),
    ("table a number", "[tool]\nnc-probe = {gate = 5}\n", "tool.nc-probe.gate is not a table"),
    ("not TOML", "this is [not toml\n", "malformed TOML"),
    ("nested 100000 deep", "x = " + "[" * 100_000 + "]" * 100_000 + "\n", "malformed TOML"),
    ("rule with escapes", '[tool.nc-probe.gate]\nrules = ["\\u001b[2Jnc1<=1"]\n', "is not METRIC OP LIMIT"),
    ("key with escapes", '[tool.nc-probe.gate]\n"\\u001b[2Jrule" = 1\n', "unknown key(s) in the gate settings"),
    ("rule of 100000 characters", '[tool.nc-probe.gate]\nrules = ["nc1<=' + "1" * 100_000 + '"]\n', "finite"),
]


@pytest.mark.parametrize("name, text, words", TOMLS, ids=[t[0] for t in TOMLS])
def test_malformed_gate_configs(name, text, words, good, tmp_path):
    (tmp_path / "gate.toml").write_text(text)
    (tmp_path / "sub").mkdir()
    result = runner.invoke(app, ["gate", str(good["json"]), "--config", "gate.toml"])
    _check(result, None if name == "baseline a folder" else "gate.toml", 2)
    assert words in result.stderr and len(result.stderr) < 600, result.stderr


# ---------------------------------------------------------------------------------------------- pipes
def _finishes(args, fifo, seconds=60):
    """Run the CLI in a thread; a run still blocked after ``seconds`` fails the test (its pipe is then opened for
    writing and closed, so that the blocked read ends)."""
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=runner.invoke(app, [str(a) for a in args])),
                              daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail(f"{args} blocked on the pipe {fifo}")
    return box["result"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
@pytest.mark.parametrize("where", ["input", "compare", "baseline", "config", "side file", "layer compare"])
def test_a_pipe_is_refused_not_read(where, good, tmp_path):
    fifo = tmp_path / ("R.matrices.npz" if where == "side file" else "gate.toml" if where == "config" else "R.json")
    os.mkfifo(fifo)
    args = {"input": ["analyze", fifo], "compare": ["compare", f"a={fifo}", f"b={good['json']}"],
            "baseline": ["gate", good["json"], "--baseline", fifo, "-r", "nc1<=baseline"],
            "config": ["gate", good["json"], "--config", fifo],
            "layer compare": ["compare", f"a={good['layers_json']}", f"b={fifo}"]}.get(where)
    if where == "side file":
        data = copy.deepcopy(good["data"])
        data["angles"]["angle_min"], data["matrices_file"] = None, "R.matrices.npz"
        (tmp_path / "S.json").write_text(json.dumps(data))
        args = ["analyze", tmp_path / "S.json"]
    result = _finishes(args, fifo)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and fifo.name in result.stderr, result.stderr


def test_reports_larger_than_the_limit_are_refused_unread(tmp_path):
    from nc_probe.core.files import MAX_JSON_BYTES

    path = tmp_path / "R.json"
    with open(path, "wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)  # sparse: nothing is written, and nothing must be read
    for args in (["analyze", path], ["gate", path, "-r", "nc1<=1"], ["compare", f"a={path}", f"b={path}"]):
        result = runner.invoke(app, [str(a) for a in args])
        _check(result, path, 2)
        assert "larger than any report JSON file nc-probe reads (256 MiB)" in result.stderr


# ---------------------------------------------------------------------------------------------- resume cache
@pytest.fixture
def series(tmp_path):
    """ce_epoch1 and ce_epoch300 copied into a folder, and a data file of 300 digits (arrays x, y)."""
    import shutil

    from nc_probe.load import samples

    for name in ("ce_epoch1", "ce_epoch300"):
        shutil.copy(samples.sample_path(name), tmp_path / f"{name}.pt")
    with np.load(samples.DIGITS_PATH) as z:
        np.savez(tmp_path / "data.npz", x=z["x"][:300] / 16.0, y=z["y"][:300])
    return tmp_path


def _run(series, name="ce_epoch1", **kw):
    from nc_probe.analysis.trajectory import run_trajectory

    kw.setdefault("data", str(series / "data.npz"))
    traj = run_trajectory([str(series / f"{name}.pt")], device="cpu", reports_dir=series / "reports", **kw)
    (point,) = traj.points
    return point, traj


def test_a_kept_report_of_another_checkpoint_is_not_reused(series):
    first, _ = _run(series)
    assert not first.reused and _run(series)[0].reused
    other, _ = _run(series, "ce_epoch300")
    kept = series / "reports" / "ce_epoch1.json"
    data = json.loads(kept.read_text())
    other_data = json.loads((series / "reports" / "ce_epoch300.json").read_text())
    data["reports"] = other_data["reports"]  # the right key, but epoch 300's reports (and its sha256)
    kept.write_text(json.dumps(data))
    again, _ = _run(series)
    assert not again.reused
    (split,) = again.reports
    assert again.reports[split].metrics["nc1"] == pytest.approx(first.reports[split].metrics["nc1"], rel=1e-9)
    assert again.reports[split].metrics["nc1"] != pytest.approx(other.reports[split].metrics["nc1"], rel=1e-3)


def test_a_changed_data_file_is_analysed_again(series):
    first, _ = _run(series)
    with np.load(series / "data.npz") as z:
        x, y = z["x"], z["y"]
    np.savez(series / "data.npz", x=x[:200], y=y[:200])  # the same name, other contents
    again, _ = _run(series)
    (split,) = again.reports
    assert not again.reused and again.reports[split].inputs["num_samples"] == 200
    assert first.reports[split].inputs["num_samples"] == 300 and _run(series)[0].reused


def _pipe(path):
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("corrupt", [
    lambda p, d: p.write_text(json.dumps({**d, "reports": []})),
    lambda p, d: p.write_text(json.dumps({**d, "reports": {}})),
    lambda p, d: p.write_text(json.dumps({**d, "reports": {"x": 1}})),
    lambda p, d: p.write_text(json.dumps({**d, "reports": {"other split": next(iter(d["reports"].values()))}})),
    lambda p, d: p.write_text(json.dumps({**d, "reports": {k: {**r, "metrics": {"nc1": "x"}}
                                                           for k, r in d["reports"].items()}})),
    lambda p, d: p.write_text(json.dumps({**d, "reports": {k: {**r, "warnings": [{"a": 1}]}
                                                           for k, r in d["reports"].items()}})),
    lambda p, d: p.write_text(json.dumps([d])),
    lambda p, d: p.write_text("{not json"),
    lambda p, d: p.write_bytes(b"\xff\xfe"),
    _pipe,
], ids=["reports []", "reports {}", "report a number", "another split", "metric text", "warnings nested",
        "a list", "not JSON", "not UTF-8", "a pipe"])
def test_a_malformed_kept_report_is_analysed_again(corrupt, series):
    first, _ = _run(series)
    kept = series / "reports" / "ce_epoch1.json"
    (corrupt(kept, json.loads(kept.read_text())) if corrupt is not _pipe else _pipe(kept))
    box = {}
    thread = threading.Thread(target=lambda: box.update(point=_run(series)[0]), daemon=True)
    thread.start()
    thread.join(120)
    if thread.is_alive():
        os.close(os.open(kept, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the run blocked on a pipe where a kept report was")
    again = box["point"]
    (split,) = again.reports
    assert not again.reused
    assert again.reports[split].metrics["nc1"] == pytest.approx(first.reports[split].metrics["nc1"], rel=1e-9)
    assert _run(series)[0].reused  # kept again, well formed


def test_data_without_a_fingerprint_is_never_reused(series, monkeypatch):
    from nc_probe.analysis import trajectory

    assert trajectory.data_fingerprint("sample:digits").startswith("sha256:")
    assert trajectory.data_fingerprint(str(series / "data.npz")).startswith("sha256:")
    for spec in ("torchvision:MNIST:/data", "mypkg.data:val_set", "sample:other", str(series / "nothing.npz")):
        assert trajectory.data_fingerprint(spec) is None, spec
    folder = series / "images"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "1.png").write_bytes(b"x")
    before = trajectory.data_fingerprint(folder)
    (folder / "cat" / "2.png").write_bytes(b"y")
    assert before.startswith("folder:") and trajectory.data_fingerprint(folder) != before
    monkeypatch.setattr(trajectory, "data_fingerprint", lambda spec: None)
    _run(series)
    point, traj = _run(series)
    assert not point.reused and "cannot tell whether the data" in traj.notes[0]
