"""Outputs are checked before any work and written as one set: nothing half-written, nothing overwritten that
the run reads, nothing new after an error or Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import nc_probe.analysis.inputs
from nc_probe.cli.app import app

runner = CliRunner()


@pytest.fixture
def features(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    H = rng.normal(size=(3, 8))[y] * 4 + rng.normal(size=(60, 8))
    path = tmp_path / "feats.npz"
    np.savez(path, H=H, y=y, W=rng.normal(size=(3, 8)))
    return path


@pytest.fixture
def no_analysis(monkeypatch):
    """Fail the test if an analysis starts: every check here must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the analysis ran before the outputs were checked")

    monkeypatch.setattr(nc_probe.analysis.inputs, "report_for", forbidden)


def _user_error(result, *words):
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    for w in words:
        assert w in text, text
    return text


def test_output_onto_an_input_is_refused_first(features, tmp_path, no_analysis):
    before = features.read_bytes()
    _user_error(runner.invoke(app, ["analyze", str(features), "--json", str(features)]), "--json", "overwrite an input")
    assert features.read_bytes() == before
    _user_error(runner.invoke(app, ["gate", str(features), "-r", "nc1<=1", "--junit", str(features)]), "--junit")
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((4, 64), np.float32), y=np.arange(4))
    _user_error(runner.invoke(app, ["analyze", "sample:ce", "--data", str(data), "--html", str(data)]), "--html")


def test_two_outputs_on_one_path_and_bad_places(features, tmp_path, no_analysis):
    out = tmp_path / "r.json"
    _user_error(runner.invoke(app, ["analyze", str(features), "--json", str(out), "--html", str(out)]),
                "--html", "--json", "same path")
    _user_error(runner.invoke(app, ["analyze", str(features), "--out", str(tmp_path / "o"), "--json",
                                    str(tmp_path / "o" / "report.json")]), "--json", "--out")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _user_error(runner.invoke(app, ["analyze", str(features), "--json", str(blocker / "r.json")]), "--json",
                "not a folder")
    _user_error(runner.invoke(app, ["analyze", str(features), "--out", str(blocker)]), "--out", "not a folder")
    _user_error(runner.invoke(app, ["analyze", str(features), "--json", str(tmp_path)]), "--json", "a folder")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _user_error(runner.invoke(app, ["analyze", str(features), "--json", str(locked / "r.json")]),
                    "not writable")
    _user_error(runner.invoke(app, ["baseline", str(features), "-o", str(features)]), "--output")


def test_interrupt_while_writing_leaves_nothing_new(features, tmp_path, monkeypatch):
    """Ctrl-C after report.json and the tables were written (while the HTML page is made): none of them appear."""
    import nc_probe.render.html as html

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(html, "write_html", interrupted)
    target = tmp_path / "results"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = runner.invoke(app, ["analyze", str(features), "--json", str(target / "report.json"), "--out",
                                 str(target / "out"), "--html", str(target / "page.html")])
    assert result.exit_code == 130, result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no outputs, no staging folders left


def test_complete_set_appears_together(features, tmp_path):
    target = tmp_path / "results"
    result = runner.invoke(app, ["analyze", str(features), "-q", "--json", str(target / "report.json"), "--out",
                                 str(target / "out"), "--plots", str(target / "plots"),
                                 "--html", str(target / "page.html")])
    assert result.exit_code == 0, result.output
    names = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert "report.json" in names and "page.html" in names and "out/metrics.csv" in names
    assert "plots/metrics.png" in names and "plots/metrics.svg" in names
    assert not [p for p in tmp_path.rglob(".nc-probe-staging-*")]


def test_save_features_is_staged_and_recorded_at_its_final_path(tmp_path):
    feats = tmp_path / "f.safetensors"
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["analyze", "sample:ce", "-q", "--save-features", str(feats), "--json", str(out)])
    assert result.exit_code == 0, result.output
    import json

    assert json.loads(out.read_text())["inputs"]["features_file"] == str(feats)
    assert feats.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _wait_for_torch_loading(proc, timeout: float = 60.0) -> None:
    """Until the child maps torch's library (it is importing torch: nc-probe's handler is in place by then). A fixed
    0.3 s sleep sent the signal before the interpreter had started on a loaded machine (a KeyboardInterrupt in
    Python's own start-up, which no program can turn into one line). Without /proc: the fixed sleep."""
    maps = Path(f"/proc/{proc.pid}/maps")
    if not maps.exists():
        time.sleep(0.3)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if "libtorch" in maps.read_text():
                return
        except OSError:
            return
        time.sleep(0.005)


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    """A real SIGINT a moment after start (while torch is being imported): exit 130, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "nc_probe", "analyze", "sample:ce", "--json",
                             str(tmp_path / "r.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_torch_loading(proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.json").exists()


def test_ctrl_c_outside_an_import_raises_keyboard_interrupt_for_the_rollback():
    # inside an import the handler exits at once (test above: a library can swallow the KeyboardInterrupt and leave
    # a half-imported numpy); anywhere else it must raise, so that staged outputs are rolled back
    from nc_probe import entry

    with pytest.raises(KeyboardInterrupt):
        entry._on_sigint(signal.SIGINT, sys._getframe())


def test_entry_point_catches_an_interrupted_import(monkeypatch, capsys):
    import importlib.abc

    from nc_probe import entry

    class Interrupt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "nc_probe.cli.app":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "nc_probe.cli.app", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupt(), *sys.meta_path])
    assert entry.main() == 130
    assert capsys.readouterr().err == "nc-probe: interrupted\n"


# ---------------------------------------------------------------------------------------------- every input counts
@pytest.fixture
def plain_checkpoint(tmp_path):
    """A bare state_dict (no metadata) and a model file that builds its architecture."""
    import torch

    from nc_probe.load.samples import sample_path

    state = torch.load(sample_path("sample:ce"), weights_only=True)["state_dict"]
    ckpt = tmp_path / "plain.pt"
    torch.save(state, ckpt)
    model_file = tmp_path / "mymodel.py"
    model_file.write_text("from nc_probe.load.samples import digits_net\n\ndef make():\n    return digits_net()\n")
    return ckpt, model_file


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_every_file_a_run_reads_is_an_input(plain_checkpoint, tmp_path, no_analysis):
    """The architecture file, the class map, the data and each checkpoint of a series: no output may replace one,
    and each refusal leaves every file as it was."""
    ckpt, model_file = plain_checkpoint
    class_map = tmp_path / "map.json"
    class_map.write_text('{"0": 0}')
    runs = tmp_path / "runs"
    runs.mkdir()
    for name in ("ce_epoch1", "ce_epoch5"):
        (runs / f"{name}.pt").write_bytes(Path(sample_file(name)).read_bytes())
    images = tmp_path / "images"
    (images / "cat").mkdir(parents=True)
    arch = ["--arch", f"{model_file}:make", "--data", "sample:digits"]
    cases = [
        (["analyze", str(ckpt), *arch, "--json", str(model_file)], "overwrite an input"),
        (["analyze", str(ckpt), *arch, "--class-map", str(class_map), "--html", str(class_map)], "overwrite an input"),
        (["trajectory", str(runs), "--json", str(runs / "ce_epoch5.pt")], "overwrite an input"),
        (["analyze", "sample:ce", "--data", str(images), "--plots", str(images / "cat")], "write into the folder"),
    ]
    for args, words in cases:
        before = _snapshot(tmp_path)
        _user_error(runner.invoke(app, args), words)
        assert _snapshot(tmp_path) == before, args


def sample_file(name):
    from nc_probe.load.samples import sample_path

    return sample_path(f"sample:{name}")


def test_a_folder_where_a_file_goes_is_refused_before_anything_is_written(features, tmp_path, no_analysis):
    """mkdir o/out/report.json; analyze --out o/out --json o/r.json: exit 2, nothing written, the user's path named."""
    (tmp_path / "o" / "out" / "report.json").mkdir(parents=True)
    (tmp_path / "o" / "out" / "metrics.csv").write_text("old")
    before = _snapshot(tmp_path)
    text = _user_error(runner.invoke(app, ["analyze", str(features), "--out", str(tmp_path / "o" / "out"), "--json",
                                           str(tmp_path / "o" / "r.json")]), "--out", "report.json")
    assert "staging" not in text
    assert _snapshot(tmp_path) == before


def test_a_failed_move_puts_the_old_files_back(features, tmp_path, monkeypatch):
    """If a rename fails half-way through the set, the files already moved are taken back and the ones they
    replaced restored: the folder is as before, and the error names the user's path."""
    import nc_probe.cli.outputs as outputs

    target = tmp_path / "results"
    target.mkdir()
    (target / "report.json").write_text("old report")
    before = _snapshot(tmp_path)
    real_replace = os.replace

    def failing(src, dst):
        if str(dst).endswith("page.html"):
            raise OSError(28, "No space left on device", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", failing)
    text = _user_error(runner.invoke(app, ["analyze", str(features), "-q", "--json", str(target / "report.json"),
                                           "--out", str(target / "out"), "--html", str(target / "page.html")]),
                       "--html")
    assert "staging" not in text and "No space left" in text
    assert _snapshot(tmp_path) == before


def test_trajectory_outputs_are_one_set_and_checked_first(tmp_path, monkeypatch):
    """Ctrl-C while the page is written: no trajectory.csv, no --json (only the resume cache of the reports)."""
    import nc_probe.render.trajectory_outputs as t

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(t, "trajectory_html", interrupted)
    out = tmp_path / "traj"
    result = runner.invoke(app, ["trajectory", "sample:ce_epoch1", "sample:ce_epoch5", "-q", "--out", str(out),
                                 "--json", str(tmp_path / "t.json"), "--html", str(tmp_path / "t.html")])
    assert result.exit_code == 130, result.output
    assert not (out / "trajectory.csv").exists() and not (tmp_path / "t.json").exists()
    assert sorted(p.name for p in (out / "reports").iterdir()) == ["ce_epoch1.json", "ce_epoch5.json"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _user_error(runner.invoke(app, ["trajectory", "sample:ce_epoch1", "--out", str(blocker)]), "--out",
                "not a folder")
