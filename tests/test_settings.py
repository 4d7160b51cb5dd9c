"""Typed settings: defaults in one place, validation that names the setting, shortcuts routed to their group, and
the same error spelled as a parameter for Python and as a flag for the command line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import nc_probe
from nc_probe.cli.app import app
from nc_probe.cli.options import FLAGS, flag_name
from nc_probe.core.errors import InputError, parameter_name
from nc_probe.core.settings import (
    FIELD_GROUP,
    DataSettings,
    ExtractionSettings,
    GiB,
    MetricSettings,
    ModelSettings,
    Settings,
    checkpoint_settings,
    metric_settings,
)


def test_defaults_live_in_the_dataclasses():
    s = Settings()
    assert s.metrics.memory_budget == 2 * GiB and s.extraction.spill_threshold == 2 * GiB
    assert s.metrics.eps2 == 0.5 and s.extraction.batch_size == 256 and s.extraction.device == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.metrics.eps2 = 1.0  # type: ignore[misc]


def test_values_are_normalised():
    m = MetricSettings(classes="0,3,5-7", memory_budget="512MiB")
    assert m.classes == (0, 3, 5, 6, 7) and m.memory_budget == 512 * 2**20
    d = DataSettings(mean="0.5,0.5,0.5", std=[0.25, 0.25, 0.25])
    assert d.mean == (0.5, 0.5, 0.5) and d.std == (0.25, 0.25, 0.25)
    assert ModelSettings(arch_kwargs='{"num_classes": 3}').arch_kwargs == {"num_classes": 3}
    assert ExtractionSettings(spill_threshold="1GiB").spill_threshold == GiB


@pytest.mark.parametrize("make,param", [
    (lambda: MetricSettings(eps2=0), "eps2"), (lambda: MetricSettings(rank_tol=2), "rank_tol"),
    (lambda: MetricSettings(subspace_dim=0), "subspace_dim"), (lambda: MetricSettings(classes="3-1"), "classes"),
    (lambda: MetricSettings(memory_budget="lots"), "memory_budget"), (lambda: DataSettings(limit=0), "limit"),
    (lambda: DataSettings(std="1,0,1"), "std"), (lambda: ModelSettings(arch_kwargs="{"), "arch_kwargs"),
    (lambda: ExtractionSettings(batch_size=0), "batch_size"), (lambda: ExtractionSettings(amp="fp8"), "amp"),
    (lambda: ExtractionSettings(workers=-1), "workers"),
])
def test_validation_names_the_setting_as_a_parameter_and_as_a_flag(make, param):
    with pytest.raises(InputError) as err:
        make()
    e = err.value
    assert param in e.parameters
    assert parameter_name(param, None) in str(e) and "--" not in str(e).split(".")[0]
    assert FLAGS[param] in e.render(flag_name)


def test_shortcuts_route_to_their_group_and_unknown_names_are_type_errors():
    s = checkpoint_settings(eps2=1.0, data="sample:digits", layer="backbone", arch="timm:resnet18")
    assert (s.metrics.eps2, s.data.data, s.extraction.layer, s.model.arch) == (1.0, "sample:digits", "backbone",
                                                                               "timm:resnet18")
    assert metric_settings(MetricSettings(eps2=2.0), rank_tol=1e-3) == MetricSettings(eps2=2.0, rank_tol=1e-3)
    with pytest.raises(TypeError, match="did you mean 'eps2'"):
        checkpoint_settings(eps=1.0)
    with pytest.raises(TypeError, match="unknown setting 'layer'"):
        metric_settings(layer="x")  # an analysis of features has no layer to tap


def test_every_setting_has_one_flag_that_every_analyzing_command_takes():
    internal = {"chunk_rows", "backend"}  # Python-only knobs
    layer_only = {"layers", "pool", "max_dim"}  # how nc-probe layers taps many layers
    assert set(FIELD_GROUP) - internal <= set(FLAGS)
    runner = CliRunner()
    for command in ("analyze", "gate", "baseline", "compare"):
        text = runner.invoke(app, [command, "--help"], terminal_width=300).output
        for param in set(FIELD_GROUP) - internal - layer_only:
            assert FLAGS[param] in text, (command, param)
    text = runner.invoke(app, ["layers", "--help"], terminal_width=300).output
    for param in set(FIELD_GROUP) - internal - {"layer", "linear_probe"}:  # one tap; the probe is always on
        assert FLAGS[param] in text, ("layers", param)


def test_the_same_error_reads_as_python_or_as_a_command_line(tmp_path):
    H = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    with pytest.raises(InputError, match=r"^eps2 must be positive.*Use e\.g\. eps2=0\.5\.$"):
        nc_probe.analyze_features(H, y, eps2=-1)
    np.savez(tmp_path / "features.npz", H=H, y=y)
    result = CliRunner().invoke(app, ["analyze", str(tmp_path / "features.npz"), "--eps2", "-1"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --eps2 must be positive, got -1.0. Use e.g. --eps2 0.5."


def test_api_takes_the_typed_objects():
    H = np.random.default_rng(1).normal(size=(40, 4))
    y = np.arange(40) % 4
    a = nc_probe.analyze_features(H, y, settings=MetricSettings(eps2=1.0, subspace_dim=2))
    b = nc_probe.analyze_features(H, y, eps2=1.0, subspace_dim=2)
    assert a.metrics == b.metrics and a.settings["eps2"] == 1.0


# ------------------------------------------------------------------------------- typed settings read back
def _features(seed=0, C=3, d=6, n=120):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    return 3 * rng.normal(size=(C, d))[y] + rng.normal(size=(n, d)), y


def test_a_report_gives_back_the_settings_it_was_made_with(tmp_path):
    H, y = _features()
    asked = dict(eps2=0.25, rank_tol=1e-5, classes=[2, 0], angle_classes=2, min_class_count=2, linear_probe=True,
                 subspace_dim=3, memory_budget="1GiB")
    r = nc_probe.analyze_features(H, y, **asked)
    r.save(tmp_path / "r.json")
    for report in (r, nc_probe.Report.load(tmp_path / "r.json")):
        m = report.settings_typed.metrics
        assert (m.eps2, m.rank_tol, m.classes, m.angle_classes, m.min_class_count, m.linear_probe, m.subspace_dim,
                m.memory_budget) == (0.25, 1e-5, (0, 2), 2, 2, True, 3, GiB)
        assert report.settings_typed.extraction.device == "cpu"  # where the statistics ran


def test_settings_read_back_tolerate_old_and_unknown_keys():
    notes: list[str] = []
    # a record from before most settings existed reads as the defaults it was made with
    assert Settings.from_dict({"eps2": 0.5}, notes=notes) == Settings() and notes == []
    s = Settings.from_dict({"eps2": 2.0, "frequent_classes": {"pairs": 10}, "splits": ["train"], "knob": 1,
                            "batch_size": None, "amp": "bf16", "data": "sample:digits"}, notes=notes)
    assert s.metrics.eps2 == 2.0 and s.extraction.amp == "bf16" and s.data.data == "sample:digits"
    assert s.extraction.batch_size == 256  # null: not recorded, the default
    # what the run did (the work plan's classes, a trajectory's splits) is no setting and no surprise either
    assert notes == ["settings.knob is not a setting this nc-probe knows; it was left out"]
    with pytest.raises(InputError, match="amp"):
        Settings.from_dict({"amp": "fp8"})


@pytest.mark.parametrize("key,value", [("eps2", 0), ("amp", "fp8"), ("subspace_dim", 0), ("batch_size", 0)])
def test_a_report_with_settings_nc_probe_never_writes_is_refused_on_reading(tmp_path, key, value):
    H, y = _features()
    data = nc_probe.analyze_features(H, y).to_dict()
    data["settings"][key] = value
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=rf"r\.json: settings are not settings nc-probe writes: {key}"):
        nc_probe.Report.load(path)


def test_gate_and_compare_read_the_settings_typed(tmp_path):
    from nc_probe.reports import gate
    from nc_probe.reports.compare import compare_reports

    H, y = _features()
    a, b = nc_probe.analyze_features(H, y), nc_probe.analyze_features(H, y, eps2=1, subspace_dim=2)
    warnings = gate.baseline_warnings(b, gate.make_baseline(a))
    assert warnings == ["eps2 is 1 here but 0.5 in the baseline", "subspace_dim is 2 here but None in the baseline"]
    # a baseline written before subspace_dim was recorded was made with its default: the same warning
    old = gate.Baseline(metrics=a.metrics, settings={"eps2": 0.5})
    assert gate.baseline_warnings(b, old) == warnings
    assert any("different eps2 (0.5 vs 1)" in w for w in compare_reports({"a": a, "b": b}).warnings)
    assert gate.baseline_warnings(a, gate.make_baseline(a)) == []
