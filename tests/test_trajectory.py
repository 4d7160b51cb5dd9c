"""Trajectories: checkpoints ordered by epoch (metadata, then file name, then as given), each report the one
analyze gives, resuming from kept reports only when checkpoint and settings are unchanged, and the CLI outputs."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import nc_probe
from nc_probe.analysis.trajectory import epoch_of, expand_inputs, run_trajectory
from nc_probe.cli.app import app
from nc_probe.core.errors import InputError
from nc_probe.load import samples

EPOCHS = [1.0, 5.0, 20.0, 100.0, 300.0, 350.0]


def _without_epoch(src: str, dest):
    """A copy of a sample checkpoint whose metadata says nothing of its epoch."""
    ckpt = torch.load(samples.sample_path(src), weights_only=True)
    ckpt["nc_probe"].pop("epoch")
    torch.save(ckpt, dest)
    return dest


def test_series_ordered_by_metadata_epoch_and_reports_equal_analyze():
    series = ["sample:ce", "sample:ce_epoch100", "sample:ce_epoch1", "sample:ce_epoch*"]
    calls = []
    traj = run_trajectory(series, device="cpu", progress=lambda i, n, label, reused: calls.append((i, n, label)))
    assert [p.epoch for p in traj.points] == EPOCHS and {p.epoch_from for p in traj.points} == {"metadata"}
    assert [c[0] for c in calls] == [1, 2, 3, 4, 5, 6] and calls[-1][1] == 6
    # analysed in the order of the epochs in their names (not epoch100 before epoch20); sample:ce has none and
    # keeps its place
    assert [c[2] for c in calls] == ["ce", "ce_epoch1", "ce_epoch5", "ce_epoch20", "ce_epoch100", "ce_epoch300"]
    direct = nc_probe.analyze_checkpoint("sample:ce_epoch20", device="cpu")
    got = traj.points[2].reports["train"]
    for key, value in direct.metrics.items():
        assert got.metrics[key] == value, key
    nc1 = traj.values("nc1")
    assert all(a > b for a, b in zip(nc1, nc1[1:]))  # the terminal phase: nc1 falls at every snapshot


def test_epoch_from_the_file_name_then_the_order_given(tmp_path):
    a = _without_epoch("ce_epoch5", tmp_path / "run_epoch_12.pt")
    b = _without_epoch("ce_epoch1", tmp_path / "run_epoch_7.pt")
    traj = run_trajectory([str(a), str(b)], device="cpu")
    assert [(p.label, p.epoch, p.epoch_from) for p in traj.points] == [
        ("run_epoch_7", 7.0, "file name"), ("run_epoch_12", 12.0, "file name")]  # numeric, not lexicographic
    c = _without_epoch("ce_epoch20", tmp_path / "last.pt")
    assert epoch_of({}, str(c)) == (None, "order given")
    traj = run_trajectory([str(a), str(c)], device="cpu")
    assert [p.label for p in traj.points] == ["run_epoch_12", "last"]  # an unknown epoch keeps the given order


@pytest.mark.parametrize("value", [10**400, -10**400, float("inf"), float("nan"), 1e300, True, "12", [3], None])
def test_an_absurd_epoch_in_metadata_falls_back_to_the_file_name(value):
    assert epoch_of({"epoch": value}, "runs/epoch_12.pt") == (12.0, "file name")
    assert epoch_of({"epoch": value}, "runs/last.pt") == (None, "order given")
    assert epoch_of({}, "runs/epoch_" + "9" * 400 + ".pt") == (None, "order given")
    assert epoch_of({"epoch": 7}, "runs/epoch_12.pt") == (7.0, "metadata")


def test_inputs_from_folders_globs_and_sample_patterns(tmp_path):
    for name in ("ce_epoch1", "ce_epoch5"):
        shutil.copy(samples.sample_path(name), tmp_path / f"{name}.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert expand_inputs([str(tmp_path)]) == [str(tmp_path / "ce_epoch1.pt"), str(tmp_path / "ce_epoch5.pt")]
    assert expand_inputs([str(tmp_path / "*5.pt")]) == [str(tmp_path / "ce_epoch5.pt")]
    assert expand_inputs(["sample:ce_epoch1*"]) == ["sample:ce_epoch1", "sample:ce_epoch100"]
    for bad, words in ((str(tmp_path / "*.ckpt"), "matches no file"), ("sample:zz*", "matches no shipped sample")):
        with pytest.raises(InputError, match=words):
            expand_inputs([bad])


def test_resume_reuses_only_unchanged_checkpoints_and_settings(tmp_path):
    ckpt = tmp_path / "ce_epoch5.pt"
    shutil.copy(samples.sample_path("ce_epoch5"), ckpt)
    series = [str(ckpt), "sample:ce_epoch1"]
    first = run_trajectory(series, device="cpu", reports_dir=tmp_path / "reports")
    assert not any(p.reused for p in first.points)
    again = run_trajectory(series, device="cpu", reports_dir=tmp_path / "reports")
    assert all(p.reused for p in again.points)
    pd.testing.assert_frame_equal(first.tidy(), again.tidy())
    other = run_trajectory(series, device="cpu", eps2=1.0, reports_dir=tmp_path / "reports")
    assert not any(p.reused for p in other.points)  # another eps2: analysed again
    shutil.copy(samples.sample_path("ce_epoch20"), ckpt)  # the same name, another checkpoint
    changed = run_trajectory(series, device="cpu", eps2=1.0, reports_dir=tmp_path / "reports")
    assert [p.reused for p in changed.points] == [True, False]  # epoch 1 first; the replaced file is new


def test_cli_trajectory_of_train_and_test(tmp_path):
    res = CliRunner().invoke(app, ["trajectory", "sample:ce_epoch1", "sample:ce_epoch100", "--split", "train,test",
                                   "--out", str(tmp_path / "t"), "--plots", str(tmp_path / "p"),
                                   "--html", str(tmp_path / "t.html"), "--json", str(tmp_path / "t.json")])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "t" / "trajectory.csv")
    assert list(df.columns) == ["checkpoint", "epoch", "split", "metric", "value"]
    assert set(df["split"]) == {"train", "test"} and set(df["epoch"]) == {1.0, 100.0}
    test_nc1 = df[(df.metric == "nc1_test") & (df.split == "test")].sort_values("epoch")["value"].tolist()
    assert len(test_nc1) == 2 and test_nc1[1] < test_nc1[0]
    assert sorted(p.name for p in (tmp_path / "t" / "reports").iterdir()) == ["ce_epoch1.json", "ce_epoch100.json"]
    assert {p.name for p in (tmp_path / "p").iterdir()} >= {"collapse.png", "accuracy.svg", "rates.png"}
    assert "ce_epoch100" in (tmp_path / "t.html").read_text()
    assert json.loads((tmp_path / "t.json").read_text())["kind"] == "trajectory"
    assert "nc1 test" in res.output


def test_cli_trajectory_bad_input_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["trajectory", str(tmp_path / "empty"), "--json", str(tmp_path / "t.json")])
    assert res.exit_code == 2 and "holds no checkpoint files" in res.output, res.output
    assert not (tmp_path / "t.json").exists()
