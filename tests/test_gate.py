"""The CI gate: rule syntax, evaluation, exit codes 0/1/2, rules from TOML, baselines, JUnit and Markdown outputs.

Small synthetic feature files (N=240, d=8, C=4) and Report JSONs made here, so the file runs in seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from typer.testing import CliRunner

import nc_probe
from nc_probe.cli.app import app
from nc_probe.core.errors import InputError
from nc_probe.metrics import SCALAR_KEYS
from nc_probe.reports import gate as g

runner = CliRunner()


def _features(seed=0, spread=1.0, n=240, d=8, C=4):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    means = rng.normal(size=(C, d)) * 3
    H = means[y] + spread * rng.normal(size=(n, d))
    return H, y, means, np.zeros(C)


def _npz(path, spread=1.0, classifier=True):
    H, y, W, b = _features(spread=spread)
    if classifier:
        np.savez(path, H=H, y=y, W=W, b=b)
    else:
        np.savez(path, H=H, y=y)
    return path


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    """gate reads ./pyproject.toml; the repository's own holds the self-test rules, which these tests must not see."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """good.npz (tight classes), worse.npz (the same means, 2.5x the spread), nocls.npz (no W/b), and the reports."""
    root = tmp_path_factory.mktemp("gate")
    out = {"good": _npz(root / "good.npz"), "worse": _npz(root / "worse.npz", spread=2.5),
           "nocls": _npz(root / "nocls.npz", classifier=False)}
    for key in ("good", "worse"):
        report = nc_probe.analyze_file(out[key])
        report.save(root / f"{key}.json")
        out[f"{key}_report"] = report
        out[f"{key}_json"] = root / f"{key}.json"
    return out


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _junit_cases(path):
    root = ET.parse(path).getroot()
    return root, root.findall("./testsuite/testcase")


# ---------------------------------------------------------------------------------------------------- rule syntax
@pytest.mark.parametrize("text, canonical, kind, amount", [
    ("nc1<=0.05", "nc1<=0.05", "absolute", 0.05),
    ("  acc_ncc >= 0.9 ", "acc_ncc>=0.9", "absolute", 0.9),
    ("NC1 < 1e-3", "nc1<0.001", "absolute", 1e-3),
    ("nc2_etf_m<=0.5", "nc2_etf_M<=0.5", "absolute", 0.5),
    ("coding_rate>=-2", "coding_rate>=-2", "absolute", -2.0),
    ("nc1<=baseline", "nc1<=baseline", "offset", 0.0),
    ("nc1<=baseline*1.10", "nc1<=baseline*1.1", "factor", 1.1),
    ("nc1 <= baseline + 10 %", "nc1<=baseline+10%", "percent", 10.0),
    ("rate_reduction>=Baseline-5%", "rate_reduction>=baseline-5%", "percent", -5.0),
    ("acc_ncc>=baseline-0.01", "acc_ncc>=baseline-0.01", "offset", -0.01),
])
def test_parse_rule_forms(text, canonical, kind, amount):
    rule = g.parse_rule(text)
    assert (rule.text, rule.kind, rule.amount) == (canonical, kind, pytest.approx(amount))
    assert g.parse_rule(rule.text) == rule  # the canonical text reads back as the same rule


@pytest.mark.parametrize("text, words", [
    ("nc1=0.1", "is not METRIC OP LIMIT"),
    ("nc1<=", "neither a number nor baseline"),
    ("nc1<=5%", "neither a number nor baseline"),
    ("nc1<=basline+10%", "neither a number nor baseline"),
    ("nc1<=baseline+-5", "neither a number nor baseline"),
    ("nc1<=1e999", "finite"),
    ("nc5<=0.1", "unknown metric 'nc5' (did you mean"),
    ("rank_energy95<=3", "per-class metric"),
])
def test_parse_rule_rejects(text, words):
    with pytest.raises(InputError) as e:
        g.parse_rule(text)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_relative_limits_use_the_baseline_magnitude():
    assert g.parse_rule("nc1<=baseline+10%").limit(2.0) == pytest.approx(2.2)
    assert g.parse_rule("coding_rate>=baseline-5%").limit(-4.0) == pytest.approx(-4.2)  # looser, whatever the sign
    assert g.parse_rule("nc1<=baseline*1.5").limit(2.0) == pytest.approx(3.0)
    assert g.parse_rule("acc_ncc>=baseline-0.01").limit(0.9) == pytest.approx(0.89)
    with pytest.raises(ValueError):
        g.parse_rule("nc1<=baseline").limit(None)


# ---------------------------------------------------------------------------------------------------- evaluate
def test_evaluate_pass_fail_error_and_exit_code(files):
    report = files["good_report"]
    nc1 = report.metrics["nc1"]
    rules = g.parse_rules([f"nc1<={nc1 * 2}", f"nc1<{nc1 / 2}", "nc1<=baseline", "acc_ncc>=baseline-1%"])
    results = g.evaluate(report, rules, baseline={"nc1": nc1 * (1 + 1e-12), "acc_ncc": None})
    assert [r.verdict for r in results] == ["pass", "fail", "pass", "error"]
    assert results[1].value == nc1 and results[1].limit == nc1 / 2 and "is not below the limit" in results[1].message
    assert "absent from the baseline" in results[3].message
    assert g.exit_code(results) == 2 and g.exit_code(results[:2]) == 1 and g.exit_code(results[:1]) == 0
    # <= and >= absorb float rounding (relative 1e-9), strict comparisons do not
    assert g.evaluate({"nc1": 1.0 + 1e-12}, g.parse_rules(["nc1<=1", "nc1<1"]))[0].passed
    assert not g.evaluate({"nc1": 1.0}, g.parse_rules(["nc1<1"]))[0].passed


def test_baseline_round_trip_and_report_as_baseline(files, tmp_path):
    b = g.make_baseline(files["good_report"])
    # acc_linear_probe is computed only with --linear-probe, the test-collapse keys only with two splits: absent from
    # a default report, and from its baseline
    from nc_probe.analysis.splits import TEST_KEYS

    assert set(b.metrics) == set(SCALAR_KEYS) - {"acc_linear_probe", *TEST_KEYS} and b.settings["eps2"] == 0.5
    g.save_baseline(b, tmp_path / "b.json")
    back = g.load_baseline(tmp_path / "b.json")
    assert back.metrics == pytest.approx(b.metrics) and back.inputs["num_classes"] == 4
    assert g.load_baseline(files["good_json"]).metrics == pytest.approx(files["good_report"].metrics)
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]  # atomic: no temp file left
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(InputError, match="neither an nc-probe baseline nor a report"):
        g.load_baseline(tmp_path / "x.json")


# ---------------------------------------------------------------------------------------------------- the CLI
def test_gate_passes_with_junit_and_markdown(files, tmp_path):
    junit, md = tmp_path / "out" / "gate.xml", tmp_path / "summary.md"
    result = run("gate", files["good"], "-r", "nc1<=0.5", "--rule", "acc_ncc >= 0.9", "-r", "nc3<=2",
                 "--junit", junit, "--markdown", md)
    assert result.exit_code == 0, result.output
    assert "passed: all 3 rules hold" in result.output and "PASS" in result.output
    root, cases = _junit_cases(junit)
    assert len(cases) == 3 and root.get("tests") == "3" and root.get("failures") == "0"
    assert [c.get("name") for c in cases] == ["nc1<=0.5", "acc_ncc>=0.9", "nc3<=2"]
    assert not any(c.find("failure") is not None or c.find("error") is not None for c in cases)
    text = md.read_text()
    assert text.startswith("### nc-probe gate: ✅ passed") and text.count("| ✅ pass |") == 3
    assert text.endswith("\n") and not text.endswith("\n\n")  # a step summary others append to
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gate.xml"]


def test_gate_fails_exit_1(files, tmp_path):
    nc1 = files["good_report"].metrics["nc1"]
    limit = round(nc1 / 2, 6)
    junit, md = tmp_path / "j.xml", tmp_path / "s.md"
    result = run("gate", files["good"], "-r", f"nc1<={limit}", "-r", "acc_ncc>=0.5", "--junit", junit,
                 "--markdown", md)
    assert result.exit_code == 1, result.output
    assert "failed: 1 of 2 rules broken" in result.output
    assert f"nc1<={limit}" in result.stderr and "is above the limit" in result.stderr
    root, cases = _junit_cases(junit)
    assert len(cases) == 2 and root.get("failures") == "1" and root.get("errors") == "0"
    failure = cases[0].find("failure")
    assert failure is not None and "above the limit" in failure.get("message") and cases[1].find("failure") is None
    assert "❌ fail" in md.read_text() and "❌ failed" in md.read_text()


def test_report_json_is_gated_without_reanalysis(files):
    result = run("gate", files["worse_json"], "-q", "-r", "acc_ncc>=0.0")
    assert result.exit_code == 0 and result.output == "", result.output


def test_baseline_regression(files, tmp_path):
    base = tmp_path / "baseline.json"
    result = run("baseline", files["good"], "-o", base)
    assert result.exit_code == 0 and base.exists(), result.output
    assert json.loads(base.read_text())["format"] == "nc-probe-baseline"
    rules = ["-r", "nc1<=baseline+10%", "-r", "rate_reduction>=baseline-5%"]
    assert run("gate", files["good"], "-b", base, *rules).exit_code == 0  # the same model holds its own baseline
    md = tmp_path / "s.md"
    result = run("gate", files["worse"], "--baseline", base, *rules, "--markdown", md)
    assert result.exit_code == 1, result.output
    assert "nc1<=baseline+10%" in result.stderr and "baseline" in result.output
    good, worse = files["good_report"].metrics, files["worse_report"].metrics
    assert worse["nc1"] > 1.1 * good["nc1"]  # the regression the rule catches
    change = (worse["nc1"] - good["nc1"]) / good["nc1"]
    assert f"{change:+.1%}" in md.read_text()


def test_missing_metric_is_exit_2_naming_why(files, tmp_path):
    junit = tmp_path / "j.xml"
    result = run("gate", files["nocls"], "-r", "nc3<=0.5", "-r", "nc1<=10", "--junit", junit)
    assert result.exit_code == 2, result.output
    assert "nc3 is absent from the report" in result.stderr and "classifier W" in result.stderr
    root, cases = _junit_cases(junit)
    assert root.get("errors") == "1" and cases[0].find("error") is not None and cases[1].find("error") is None


def test_mahalanobis_is_gated_only_when_asked(files):
    """acc_ncc_mahalanobis is opt-in: a rule on it without --mahalanobis says how to ask for it (exit 2)."""
    result = run("gate", files["good"], "-r", "acc_ncc_mahalanobis>=0.5")
    assert result.exit_code == 2, result.output
    assert "computed only when asked; gate with --mahalanobis" in result.stderr
    result = run("gate", files["good"], "-r", "acc_ncc_mahalanobis>=0.5", "--mahalanobis")
    assert result.exit_code == 0, result.output
    assert "computed only when asked; gate with {mahalanobis}" in g.absent_reason(files["good_report"],
                                                                                   "acc_ncc_mahalanobis")


@pytest.mark.parametrize("rule, words", [
    ("nc5<=1", "unknown metric 'nc5'"),
    ("nc1=1", "is not METRIC OP LIMIT"),
    ("nc1<=baseline+10%", "compare with a baseline but none is given"),
])
def test_usage_errors_exit_2_before_any_analysis(rule, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("gate", tmp_path / "not-even-there.npz", "-r", rule)  # rules are checked first
    assert result.exit_code == 2, result.output
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    if "unknown" in words:
        assert all(k in result.stderr for k in SCALAR_KEYS)  # lists the valid names


def test_absent_baseline_and_missing_input_exit_2(files, tmp_path):
    result = run("gate", files["good"], "-r", "nc1<=baseline", "-b", tmp_path / "nope.json")
    assert result.exit_code == 2 and "baseline not found" in result.stderr, result.output
    result = run("gate", tmp_path / "nope.npz", "-r", "nc1<=1")
    assert result.exit_code == 2 and "no such file" in result.stderr
    result = run("gate", files["good"])
    assert result.exit_code == 2 and "no rules to check" in result.stderr


def test_malformed_toml_exit_2(files, tmp_path, monkeypatch):
    bad = tmp_path / "gate.toml"
    bad.write_text('[tool.nc-probe.gate]\nrules = ["nc1<=1"\n')
    result = run("gate", files["good"], "--config", bad)
    assert result.exit_code == 2 and "malformed TOML" in result.stderr and "gate.toml" in result.stderr
    bad.write_text('[tool.nc-probe.gate]\nrule = ["nc1<=1"]\n')
    result = run("gate", files["good"], "--config", bad)
    assert result.exit_code == 2 and "unknown key(s)" in result.stderr and "rule" in result.stderr
    bad.write_text('[tool.nc-probe.gate]\nrules = ["nc1<=oops"]\n')
    result = run("gate", files["good"], "--config", bad)
    assert result.exit_code == 2 and "gate.toml" in result.stderr and "'nc1<=oops'" in result.stderr
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.nc-probe.gate\n")
    result = run("gate", files["good"], "-r", "nc1<=1")
    assert result.exit_code == 2 and "pyproject.toml: malformed TOML" in result.stderr


def test_rules_and_baseline_from_pyproject(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ci").mkdir()
    g.save_baseline(files["good_report"], tmp_path / "ci" / "base.json")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\n\n[tool.nc-probe.gate]\n'
        'rules = ["nc1<=baseline+10%", "acc_ncc >= 0.5"]\nbaseline = "ci/base.json"\n')
    result = run("gate", files["good"])
    assert result.exit_code == 0, result.output
    assert "nc1" in result.output and "acc_ncc" in result.output and "2 rules hold" in result.output
    result = run("gate", files["worse"])
    assert result.exit_code == 1, result.output
    result = run("gate", files["good"], "-r", f"nc1<{files['good_report'].metrics['nc1'] / 2}")  # added to them
    assert result.exit_code == 1 and "1 of 3 rules broken" in result.output
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\n')  # no gate table: only --rule
    assert run("gate", files["good"], "-r", "nc1<=1").exit_code == 0
    (tmp_path / "other.toml").write_text('rules = ["acc_ncc>=1.5"]\n')  # --config: top-level keys, replaces it
    assert run("gate", files["good"], "--config", "other.toml").exit_code == 1


def test_analysis_options_reach_the_report_and_mismatches_warn(files, tmp_path):
    base = tmp_path / "b.json"
    g.save_baseline(files["good_report"], base)  # eps2 = 0.5
    result = run("gate", files["good"], "-b", base, "--eps2", "0.25", "-r", "coding_rate>=0")
    assert result.exit_code == 0, result.output
    assert "eps2 is 0.25 here but 0.5 in the baseline" in result.stderr
    result = run("gate", files["good"], "--classes", "0-2", "-r", "rate_reduction>=0")
    assert result.exit_code == 2 and "--classes" in result.stderr, result.output


def test_help_documents_the_rule_syntax():
    result = runner.invoke(app, ["gate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for words in ("baseline+10%", "baseline-5%", "[tool.nc-probe.gate]", "Exit codes", "rate_reduction", "--eps2"):
        assert words in result.output, words


def test_real_process_exit_code_without_traceback(files, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nc_probe", "gate", str(files["good"]), "-r", "nc1<=1e-9",
                           "-r", "acc_ncc>=0.5", "--junit", "j.xml"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "failed: nc1<=1e-09" in proc.stderr and "1 of 2 rules broken" in proc.stdout
    assert len(_junit_cases(tmp_path / "j.xml")[1]) == 2
