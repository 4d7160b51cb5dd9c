"""The CI regression gate: rules on a report's scalar metrics, optionally relative to a baseline.

Pure functions under the ``nc-probe gate`` and ``nc-probe baseline`` commands (``docs/gate.md``):

- :func:`parse_rule` turns ``'nc1<=0.05'`` or ``'rate_reduction>=baseline-5%'`` into a :class:`Rule`;
- :func:`load_config` / :func:`load_rules` read ``[tool.nc-probe.gate]`` of a pyproject.toml (or a gate TOML file);
- :func:`make_baseline` / :func:`load_baseline` write and read the baseline of relative rules;
- :func:`evaluate` checks the rules against a Report and returns one :class:`Result` per rule;
- :func:`exit_code` and :func:`summary` say what the results mean; :mod:`nc_probe.render.gate` writes them as JUnit
  XML, Markdown and a terminal table.

Rule grammar (whitespace anywhere)::

    RULE  := METRIC OP LIMIT
    OP    := "<=" | ">=" | "<" | ">"
    LIMIT := NUMBER | "baseline" | "baseline" "*" NUMBER | "baseline" ("+" | "-") NUMBER ["%"]

``baseline+10%`` is ``b + 0.10*|b|`` and ``baseline-5%`` is ``b - 0.05*|b|`` (percentages of the baseline's
magnitude, so they loosen the limit whatever its sign); ``baseline*1.1`` is ``1.1*b``; ``baseline+0.01`` is
``b + 0.01``. ``<=`` and ``>=`` allow a relative slack of :data:`REL_TOL` for float rounding between machines.

A rule whose metric is absent (null in the report or the baseline, e.g. ``nc3`` of features without a classifier)
is an *error*, not a failure: the gate cannot tell whether the model regressed, and the setup needs fixing.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nc_probe._version import __version__
from nc_probe.core.errors import InputError
from nc_probe.core.files import MAX_TOML_BYTES, atomic_write_text, json_safe, read_input, read_json
from nc_probe.core.json_checks import Fields, check_baseline
from nc_probe.core.settings import Settings
from nc_probe.core.text import distinct_pair, format_number, quoted
from nc_probe.metrics import PER_CLASS_KEYS, SCALAR_KEYS
from nc_probe.reports.report import SCHEMA_VERSION, Report
from nc_probe.reports.report_checks import check_report, check_typed_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

BASELINE_FORMAT = "nc-probe-baseline"
CONFIG_TABLE = ("tool", "nc-probe", "gate")
CONFIG_KEYS = {"rules", "baseline"}
REL_TOL = 1e-9
GATE_DIGITS = 6  # significant digits of the numbers the gate prints: enough to see a 10% rule's margin
OPS = ("<=", ">=", "<", ">")
PASS, FAIL, ERROR = "pass", "fail", "error"
RULE_EXAMPLES = "write e.g. 'nc1<=0.05', 'acc_ncc>=0.9', 'nc1<=baseline+10%' or 'rate_reduction>=baseline-5%'"

_UNSIGNED = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER = rf"[+-]?{_UNSIGNED}"
_RULE_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*(.*?)\s*")
_ABS_RE = re.compile(rf"({_NUMBER})")
_REL_RE = re.compile(rf"baseline\s*(?:(\*)\s*({_NUMBER})|([+-])\s*({_UNSIGNED})\s*(%?))?", re.IGNORECASE)
_METRICS = {k.lower(): k for k in SCALAR_KEYS}


# ---------------------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """``metric op limit``. ``kind``: "absolute" (limit = amount), or relative to the baseline value b:
    "factor" (b * amount), "offset" (b + amount) or "percent" (b + amount/100 * |b|)."""

    metric: str
    op: str
    kind: str
    amount: float
    source: str = field(default="--rule", compare=False)

    @property
    def relative(self) -> bool:
        return self.kind != "absolute"

    @property
    def condition(self) -> str:
        """The rule without its metric, canonical: ``<=0.05``, ``<=baseline+10%``."""
        a, sign = _exact(self.amount), "-" if self.amount < 0 else "+"
        limit = {"absolute": a, "factor": f"baseline*{a}", "offset": f"baseline{sign}{_exact(abs(self.amount))}",
                 "percent": f"baseline{sign}{_exact(abs(self.amount))}%"}[self.kind]
        if self.kind in ("offset", "percent") and self.amount == 0:
            limit = "baseline"
        return f"{self.op}{limit}"

    @property
    def text(self) -> str:
        return f"{self.metric}{self.condition}"

    def __str__(self) -> str:
        return self.text

    def limit(self, baseline: float | None = None) -> float:
        """The number the metric is compared with (``baseline``: the baseline's value of the metric)."""
        if self.kind == "absolute":
            return self.amount
        if baseline is None:
            raise ValueError(f"rule {self.text} needs the baseline value")
        b = float(baseline)
        return {"factor": b * self.amount, "offset": b + self.amount,
                "percent": b + abs(b) * self.amount / 100}[self.kind]

    def holds(self, value: float, limit: float) -> bool:
        if self.op in ("<=", ">=") and math.isclose(value, limit, rel_tol=REL_TOL, abs_tol=0.0):
            return True
        return {"<=": value <= limit, ">=": value >= limit, "<": value < limit, ">": value > limit}[self.op]


def parse_rule(text: str, source: str = "--rule") -> Rule:
    """``'nc1<=0.05'``, ``'acc_ncc >= 0.9'``, ``'nc1<=baseline*1.10'``, ``'rate_reduction>=baseline-5%'``.

    Raises InputError for a malformed rule or a metric that is not a scalar metric key (the message lists them).
    """
    where = f" ({source})" if source and source != "--rule" else ""
    if not isinstance(text, str):
        raise InputError(f"rule {quoted(text)}{where} is not a string", fix=RULE_EXAMPLES)
    m = _RULE_RE.fullmatch(text)
    if not m:
        raise InputError(f"rule {quoted(text)}{where} is not METRIC OP LIMIT with OP one of <=, >=, <, >",
                         fix=RULE_EXAMPLES)
    name, op, limit = m.groups()
    metric = _metric_key(name, text, where)
    if _ABS_RE.fullmatch(limit):
        kind, amount = "absolute", float(limit)
    elif rel := _REL_RE.fullmatch(limit):
        star, factor, sign, delta, percent = rel.groups()
        if star:
            kind, amount = "factor", float(factor)
        elif sign:
            kind, amount = ("percent" if percent else "offset"), float(delta) * (-1 if sign == "-" else 1)
        else:
            kind, amount = "offset", 0.0
    else:
        raise InputError(f"rule {quoted(text)}{where}: limit {quoted(limit)} is neither a number nor baseline, "
                         "baseline*F, baseline+X, baseline-X, baseline+P% or baseline-P%", fix=RULE_EXAMPLES)
    if not math.isfinite(amount):
        raise InputError(f"rule {quoted(text)}{where}: the limit must be a finite number", fix=RULE_EXAMPLES)
    return Rule(metric, op, kind, amount, source)


def _metric_key(name: str, text: str, where: str) -> str:
    key = _METRICS.get(name.lower())
    if key is not None:
        return key
    valid = ", ".join(SCALAR_KEYS)
    if name.lower() in {k.lower() for k in PER_CLASS_KEYS} | {"angle_min", "subspace_affinity"}:
        raise InputError(f"rule {quoted(text)}{where}: {name} is a per-class metric; rules take a scalar metric",
                         fix=f"use one of: {valid}")
    close = difflib.get_close_matches(name.lower()[:100], list(_METRICS), n=1)
    hint = f" (did you mean {_METRICS[close[0]]}?)" if close else ""
    raise InputError(f"rule {quoted(text)}{where}: unknown metric {quoted(name)}{hint}", fix=f"use one of: {valid}")


def parse_rules(texts: Sequence[str], source: str = "--rule") -> list[Rule]:
    return [parse_rule(t, source) for t in texts]


def merge_rules(*groups: Sequence[Rule]) -> list[Rule]:
    """Concatenate rule lists, dropping exact repeats (the first one, and its source, is kept)."""
    seen, out = set(), []
    for rule in (r for g in groups for r in g):
        if rule not in seen:
            seen.add(rule)
            out.append(rule)
    return out


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class GateConfig:
    """Rules and baseline path of a TOML file (``baseline`` is resolved against the file's folder)."""

    rules: list[Rule]
    baseline: Path | None = None
    source: Path | None = None


def load_config(path, *, table_required: bool = True) -> GateConfig:
    """Read ``[tool.nc-probe.gate]`` (keys ``rules``, a list of rule strings, and ``baseline``, a path) from a TOML
    file. A file without that table may carry the keys at its top level (a dedicated gate TOML file).

    ``table_required=False`` (for the pyproject.toml of the current folder): a file with neither gives no rules.
    """
    path = Path(path)
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise InputError("reading TOML on Python 3.10 needs the tomli package", path=path, fix="pip install tomli")
    raw = read_input(path, "TOML", "check the path of the gate configuration (a .toml file)", limit=MAX_TOML_BYTES)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError("is not a text file", path=path, fix="pass a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"malformed TOML ({e})", path=path, fix="fix the TOML syntax") from None
    except RecursionError:
        raise InputError("malformed TOML (nested too deeply)", path=path, fix="fix the TOML syntax") from None
    table = data
    for key in CONFIG_TABLE:
        table = table.get(key) if isinstance(table, dict) else None
    if table is None:
        table = {k: v for k, v in data.items() if k in CONFIG_KEYS}
        if not table:
            if table_required:
                raise InputError("has no tool.nc-probe.gate table and no top-level rules", path=path,
                                 fix="add e.g. rules = [\"nc1<=0.05\"] to a tool.nc-probe.gate table")
            return GateConfig([], None, path)
    if not isinstance(table, dict):
        raise InputError("tool.nc-probe.gate is not a table", path=path, fix="give it the keys rules and baseline")
    unknown = sorted(set(table) - CONFIG_KEYS)
    if unknown:
        raise InputError(f"unknown key(s) in the gate settings: {', '.join(quoted(k) for k in unknown[:5])}",
                         path=path, fix="use rules = [...] and baseline = \"...\"")
    rules = table.get("rules", [])
    if isinstance(rules, str):
        rules = [rules]
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise InputError("rules must be a list of strings", path=path, fix="write rules = [\"nc1<=0.05\"]")
    baseline = table.get("baseline")
    if baseline is not None and (not isinstance(baseline, str) or not baseline.strip() or "\0" in baseline):
        raise InputError("baseline must be a path string", path=path, fix="write baseline = \"baseline.json\"")
    return GateConfig(parse_rules(rules, source=str(path)),
                      None if baseline is None else (path.parent / baseline), path)


def load_rules(path, *, table_required: bool = True) -> list[Rule]:
    """The rules of a pyproject.toml or gate TOML file (see :func:`load_config`)."""
    return load_config(path, table_required=table_required).rules


# ---------------------------------------------------------------------------------------------------- baseline
@dataclass
class Baseline:
    """The scalar metrics a relative rule compares with, and what they were measured on."""

    metrics: dict
    inputs: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    source: str | None = None

    def to_dict(self) -> dict:
        return {"format": BASELINE_FORMAT, "schema_version": SCHEMA_VERSION, "nc_probe_version": __version__,
                "inputs": self.inputs, "settings": self.settings, "metrics": self.metrics}


_BASELINE_INPUTS = ("source", "sha256", "num_samples", "num_classes", "dim", "layer", "has_classifier")
_BASELINE_SETTINGS = ("eps2", "rank_tol", "subspace_dim", "subspace_classes")


def make_baseline(report: Report) -> Baseline:
    """The baseline of a report: its scalar metrics, with the inputs and settings they depend on."""
    return Baseline(metrics={k: report.metrics.get(k) for k in SCALAR_KEYS if k in report.metrics},
                    inputs={k: report.inputs.get(k) for k in _BASELINE_INPUTS if k in report.inputs},
                    settings={k: report.settings.get(k) for k in _BASELINE_SETTINGS if k in report.settings},
                    source=report.inputs.get("source"))


def save_baseline(baseline: Baseline | Report, path) -> Path:
    """Write a baseline (or the baseline of a report) as JSON, atomically."""
    if isinstance(baseline, Report):
        baseline = make_baseline(baseline)
    return atomic_write_text(path, json.dumps(json_safe(baseline.to_dict()), indent=2, allow_nan=False) + "\n")


def load_baseline(path) -> Baseline:
    """Read a baseline written by ``nc-probe baseline`` (or a full report JSON, whose metrics serve as one)."""
    path = Path(path)
    fix = "write one with nc-probe baseline INPUT -o " + quoted(path.name).strip("'")
    data = read_json(path, "baseline", fix=fix, missing="baseline not found")
    if isinstance(data, dict) and data.get("format") != BASELINE_FORMAT and "schema_version" in data:
        report = check_report(data, path, fix)  # a report JSON serves as a baseline: checked as a report
        return Baseline(metrics=report["metrics"], inputs=report["inputs"], settings=report["settings"],
                        source=str(path))
    data = check_baseline(data, path, fix, BASELINE_FORMAT)
    check_typed_settings(Fields(path, fix), data["settings"])  # baseline_warnings reads them typed
    return Baseline(metrics=data["metrics"], inputs=data["inputs"], settings=data["settings"], source=str(path))


def baseline_warnings(report: Report, baseline: Baseline) -> list[str]:
    """Differences that make a comparison with the baseline questionable (settings, classes, dimension)."""
    out = []
    here, there = report.settings_typed.metrics, Settings.from_dict(baseline.settings).metrics
    for key in ("eps2", "rank_tol", "subspace_dim"):
        if getattr(here, key) != getattr(there, key):
            out.append(f"{key} is {getattr(here, key)} here but {getattr(there, key)} in the baseline")
    for key, name in (("num_classes", "classes"), ("dim", "feature dimension")):
        if key in baseline.inputs and key in report.inputs and baseline.inputs[key] != report.inputs[key]:
            out.append(f"{name}: {report.inputs[key]} here but {baseline.inputs[key]} in the baseline")
    return out


# ---------------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Result:
    """One rule checked: ``verdict`` is "pass", "fail" or "error" (the metric or its baseline is absent)."""

    rule: Rule
    verdict: str
    value: float | None = None
    limit: float | None = None
    baseline: float | None = None
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    @property
    def change(self) -> float | None:
        """Relative change against the baseline, (value - b) / |b|, or None."""
        if self.value is None or self.baseline is None or self.baseline == 0:
            return None
        return (self.value - self.baseline) / abs(self.baseline)


def evaluate(report: Report | Mapping, rules: Sequence[Rule],
             baseline: Baseline | Report | Mapping | None = None) -> list[Result]:
    """Check every rule against ``report`` (a Report or a mapping of metric values); one Result per rule, in order.

    ``baseline``: a Baseline, a Report or a mapping of metric values; relative rules need it. Absolute rules show
    the baseline's value too, when there is one.
    """
    metrics = report.metrics if isinstance(report, Report) else dict(report)
    base = None if baseline is None else (baseline.metrics if isinstance(baseline, (Baseline, Report))
                                          else dict(baseline))
    return [_evaluate_one(rule, metrics, base, report) for rule in rules]


def _evaluate_one(rule: Rule, metrics: dict, base: dict | None, report) -> Result:
    b = None if base is None else _number(base.get(rule.metric))
    value = _number(metrics.get(rule.metric))
    if value is None:
        why = absent_reason(report, rule.metric)
        return Result(rule, ERROR, None, None, b, f"{rule.metric} is absent from the report: {why}")
    if rule.relative:
        if base is None:
            return Result(rule, ERROR, value, None, None, f"{rule.text} compares with a baseline but none is given")
        if b is None:
            return Result(rule, ERROR, value, None, None,
                          f"{rule.metric} is absent from the baseline (null there), so {rule.text} cannot be checked")
    limit = rule.limit(b)
    holds = rule.holds(value, limit)
    v, lim = distinct_pair(value, limit, GATE_DIGITS)
    relation = {"<=": "above", "<": "not below", ">=": "below", ">": "not above"}[rule.op]
    text = (f"{rule.metric} = {v} {rule.op} {lim}" if holds
            else f"{rule.metric} = {v} is {relation} the limit {lim}")
    if b is not None and rule.relative:
        change = (value - b) / abs(b) if b else None
        text += f" (baseline {format_number(b, GATE_DIGITS)}" + (f", {change:+.1%}" if change is not None else "") + ")"
    return Result(rule, PASS if holds else FAIL, value, limit, b, text)


def absent_reason(report, metric: str) -> str:
    """Why a report holds null for ``metric``, in words the user can act on."""
    if not isinstance(report, Report):
        return "it is null or missing"
    inputs = report.inputs
    if metric == "acc_linear_probe" and metric not in report.metrics:
        return "it is computed only when asked; gate with {linear_probe}"
    if metric == "acc_ncc_mahalanobis" and report.settings.get("mahalanobis") is False:
        return "it is computed only when asked; gate with {mahalanobis}"
    if metric.endswith(("_test", "_test_ratio")) and metric not in report.metrics:
        return ("it compares a test split with a train split, which nc-probe analyze --split train,test does; the "
                "gate analyses one split")
    if metric not in report.metrics:
        return (f"the report (schema {report.schema_version}) has no such key; analyze the input again with this "
                "version of nc-probe")
    no_classifier = not inputs.get("has_classifier", True)
    fix = "store W and b in the feature file, or gate the checkpoint itself"
    if (metric.endswith("_W") or metric == "nc3") and no_classifier:
        return f"it needs the final linear classifier W, and the input has none; {fix}"
    if metric in ("nc4", "acc_model") and no_classifier and not inputs.get("has_logits", False):
        return f"it needs the classifier W (or stored logits), and the input has neither; {fix}"
    if metric in ("coding_rate_within", "rate_reduction") and report.settings_typed.metrics.classes is not None:
        return ("it needs the subspace statistics of every class, and they were kept for only some ({classes} or "
                "{memory_budget}); gate without {classes} or with a larger {memory_budget}")
    if metric in ("angle_min_mean", "angle_min_min"):
        return "it needs subspace statistics of at least two classes ({classes}, {memory_budget})"
    notes = "; ".join(quoted(w, 200) for w in report.warnings[:3])
    return "the analysis left it null" + (f" ({notes})" if notes else "")


def exit_code(results: Sequence[Result]) -> int:
    """0 every rule holds, 1 a rule failed, 2 a rule could not be checked (an error outranks a failure)."""
    verdicts = {r.verdict for r in results}
    return 2 if ERROR in verdicts else 1 if FAIL in verdicts else 0


def summary(results: Sequence[Result]) -> str:
    """One line: ``passed: all 3 rules hold``, ``failed: 1 of 3 rules broken``, ``error: 1 of 3 rules could not be
    checked``."""
    n = len(results)
    failed = sum(r.verdict == FAIL for r in results)
    errors = sum(r.verdict == ERROR for r in results)
    rules = "rule" if n == 1 else "rules"
    if errors:
        return f"error: {errors} of {n} {rules} could not be checked" + (f", {failed} broken" if failed else "")
    if failed:
        return f"failed: {failed} of {n} {rules} broken"
    return f"passed: all {n} {rules} hold" if n != 1 else "passed: the rule holds"


# ---------------------------------------------------------------------------------------------------- formatting
def _number(v) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _exact(v: float) -> str:
    """The shortest text that reads back as ``v``: 0.05, 1e-07, 10 (not 10.0)."""
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text
