"""LayerReport: the metrics of every tapped layer of one model, the depth laws fitted over them, and their JSON and
tidy (long) forms (``docs/metrics.md``, "Layers").

Each layer carries the scalar metrics of a single-layer :class:`~nc_probe.reports.report.Report` of its features, plus
``D_l`` (= C * nc1) and the means over classes of the per-class ranks; the full module name is the key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from nc_probe.core.errors import InputError, spell
from nc_probe.core.files import atomic_write_text, json_safe, read_json
from nc_probe.core.json_checks import Fields, check_inputs, check_timings, kind_of
from nc_probe.core.settings import Settings
from nc_probe.core.text import quoted
from nc_probe.metrics import depth
from nc_probe.reports.report import Report
from nc_probe.reports.report_checks import check_typed_settings

LAYER_SCHEMA_VERSION = "layers-1.0"
LAYER_FIX = "write it with nc-probe layers --json"
CLASS_MEANS = ("rank_energy95", "rank_numerical", "rank_effective")
#: Below this R^2 the depth law ln D_l = a - rho * l does not describe the layers, and rho is not read as a rate
#: of decay per layer (docs/metrics.md, "Layers").
LAW_FIT_R2 = 0.8


@dataclass
class LayerReport:
    """The result of one layer analysis.

    - ``inputs``: source, sha256, data, split, arch, format, num_samples, num_classes, class_names, layers (the
      spec), pool, max_dim.
    - ``layers``: one dict per layer in forward order: ``name`` (full module name, or ``@penultimate`` for the
      input of the final nn.Linear when no selected module gives it), ``depth`` (1..L), ``shape`` (raw output per
      sample), ``pool``, ``raw_dim``, ``dim``, ``projection_seed``, ``metrics``, ``warnings``.
    - ``laws``: ``D_l`` (``rho``, ``a``, ``r2``, ``layers``: the fit of ln D_l = a - rho * depth) and the plateau
      layers of ``acc_ncc`` and ``acc_linear_probe`` (``{"depth", "name"}``).
    """

    inputs: dict
    settings: dict
    layers: list = field(default_factory=list)
    laws: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    cka: dict | None = None  # {"layers", "matrix"}: linear CKA between every pair of layers
    kind: str = "layers"
    schema_version: str = LAYER_SCHEMA_VERSION

    @classmethod
    def from_reports(cls, reports: list[tuple[dict, Report]], inputs: dict, settings: dict) -> LayerReport:
        """Layers from ``(layer info, single-layer report)`` pairs in forward order; fits the depth laws."""
        layers = []
        for i, (info, report) in enumerate(reports, start=1):
            layers.append({**info, "depth": i, "metrics": layer_metrics(report), "warnings": list(report.warnings)})
        out = cls(inputs=inputs, settings=settings, layers=layers)
        out.laws = out.fit_laws()
        return out

    @property
    def settings_typed(self) -> Settings:
        """:attr:`settings` as the typed :class:`~nc_probe.core.settings.Settings` (see :meth:`Settings.from_dict`)."""
        return Settings.from_dict(self.settings)

    def fit_laws(self) -> dict:
        depths = [layer["depth"] for layer in self.layers]
        laws: dict = {"D_l": depth.fit_decay(depths, self.values("D_l"))}
        for key in ("acc_ncc", "acc_linear_probe"):
            i = depth.plateau_start(self.values(key))
            laws[f"plateau_{key}"] = None if i is None else {"depth": self.layers[i]["depth"],
                                                             "name": self.layers[i]["name"]}
        return laws

    def values(self, key: str) -> list:
        """One metric over the layers, in forward order (None where absent)."""
        return [layer["metrics"].get(key) for layer in self.layers]

    def accuracy_course(self, key: str) -> dict | None:
        """How an accuracy (``acc_ncc``, ``acc_linear_probe``) runs through depth, for statements that must be
        true: ``first``, ``peak`` (the first layer of the highest value), ``last`` and ``lowest_after_peak`` (each a
        ``{"depth", "name", "value"}``), ``plateau`` (the layer after which it never gains more than
        :data:`~nc_probe.metrics.depth.PLATEAU_TOLERANCE`, or None), and ``shape``: ``"falls"`` (after its peak it
        drops by more than the tolerance), ``"rises"`` (it still gains at the last layer: no plateau), ``"flat"``
        (within the tolerance from the plateau on), or ``"single"`` (one layer). None without values."""
        import math

        points = [{"depth": layer["depth"], "name": layer["name"], "value": float(v)} for layer in self.layers
                  if isinstance((v := layer["metrics"].get(key)), (int, float)) and math.isfinite(v)]
        if not points:
            return None
        peak = max(points, key=lambda p: p["value"])  # the first of equal maxima
        after = points[points.index(peak) + 1:]
        lowest = min(after, key=lambda p: p["value"]) if after else None
        plateau = self.laws.get(f"plateau_{key}") or None
        plateau_point = next((p for p in points if plateau and p["depth"] == plateau.get("depth")), None)
        if len(points) == 1:
            shape = "single"
        elif lowest is not None and peak["value"] - lowest["value"] > depth.PLATEAU_TOLERANCE:
            shape = "falls"
        elif plateau_point is None or plateau_point is points[-1]:
            shape = "rises"
        else:
            shape = "flat"
        return {"first": points[0], "peak": peak, "last": points[-1], "lowest_after_peak": lowest,
                "plateau": plateau_point, "shape": shape}

    def layer_warnings(self) -> list[str]:
        """Each layer's warnings once, led by the layers that gave them ("every layer" when all did): the same
        small-class warning of every layer would otherwise repeat L times."""
        where: dict[str, list[str]] = {}
        for layer in self.layers:
            for w in layer["warnings"]:
                where.setdefault(str(w), []).append(layer["name"])
        return [f"{'every layer' if len(names) == len(self.layers) > 1 else ', '.join(names)}: {w}"
                for w, names in where.items()]

    def all_warnings(self) -> list[str]:
        """The report's own warnings (loading, data, CKA), then :meth:`layer_warnings`."""
        return [str(w) for w in self.warnings] + self.layer_warnings()

    def plateau_text(self, key: str) -> str:
        """A short cell for a table of models: the plateau layer, the peak and the fall after it, or '-'."""
        from nc_probe.core.text import format_number

        course = self.accuracy_course(key)
        if course is None:
            return "-"
        if course["shape"] == "falls":
            peak, last = course["peak"], course["last"]
            return f"peak {peak['depth']} ({peak['name']}), falls to {format_number(last['value'])}"
        if course["shape"] == "rises":
            return "none (still rising)"
        p = course["plateau"] or course["last"]
        return f"{p['depth']} ({p['name']})"

    def law_fits(self) -> bool | None:
        """Whether the depth law describes the layers (R^2 >= :data:`LAW_FIT_R2`); None when it was not fitted."""
        r2 = (self.laws.get("D_l") or {}).get("r2")
        return None if r2 is None else r2 >= LAW_FIT_R2

    @property
    def names(self) -> list[str]:
        return [layer["name"] for layer in self.layers]

    # ------------------------------------------------------------------------------------------------ forms
    def tidy(self, model: str | None = None) -> pd.DataFrame:
        """Long format: one row per (model, layer, depth, metric, value); the fitted laws as rows of layer ""."""
        model = model or self.inputs.get("label") or Path(str(self.inputs.get("source", "model"))).stem
        rows = [(model, layer["name"], layer["depth"], key, value) for layer in self.layers
                for key, value in layer["metrics"].items()]
        for key in ("rho", "a", "r2"):
            rows.append((model, "", None, key, (self.laws.get("D_l") or {}).get(key)))
        df = pd.DataFrame(rows, columns=["model", "layer", "depth", "metric", "value"])
        df["depth"] = df["depth"].astype("Int64")  # whole layers; empty on the law rows
        return df

    def to_dict(self) -> dict:
        data = asdict(self)
        data["warnings"] = [spell(str(w)) for w in self.warnings]
        for layer in data["layers"]:
            layer["warnings"] = [spell(str(w)) for w in layer["warnings"]]
        return json_safe(data)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path) -> Path:
        return atomic_write_text(Path(path), self.to_json())

    @classmethod
    def from_dict(cls, data: dict, *, path=None) -> LayerReport:
        """A layer report from its JSON data, every value checked for its type first (:func:`check_layer_report`)."""
        checked = check_layer_report(data, path)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in checked.items() if k in known})

    @classmethod
    def load(cls, path) -> LayerReport:
        """Read a layer-report JSON (a regular file of at most 256 MiB)."""
        return cls.from_dict(read_json(path, "layer report", fix=LAYER_FIX), path=path)


def is_layer_report(data) -> bool:
    return isinstance(data, dict) and data.get("kind") == "layers" and isinstance(data.get("layers"), list)


def check_layer_report(data, path=None) -> dict:
    """The fields of a layer report's JSON data, every value a renderer uses checked: each layer a name, a depth,
    metrics (numbers or null) and warnings (text); the laws' numbers and plateau layers; the CKA matrix. One
    InputError names ``path``, the field and the fix."""
    f = Fields(path, LAYER_FIX)
    if not is_layer_report(data):
        f.fail("", "is JSON but not an nc-probe layer report (no kind \"layers\" with a list of layers)")
    version = data.get("schema_version", LAYER_SCHEMA_VERSION)
    if not isinstance(version, str) or not version.startswith("layers-1."):
        shown = f"{quoted(version)} is" if isinstance(version, str) else f"is {kind_of(version)},"
        raise InputError(f"schema_version {shown} not a layer-report schema this nc-probe reads (layers-1.x)",
                         path=path, fix="analyze the model again with this version of nc-probe layers")
    out = dict(data)
    out["inputs"] = check_inputs(f, data.get("inputs", {}))
    out["settings"] = check_typed_settings(f, data.get("settings", {}))
    out["timings"] = check_timings(f, data.get("timings", {}))
    out["warnings"] = f.texts(data.get("warnings", []), "warnings", null=False)
    out["layers"] = [_layer(f, layer, f"layers[{i}]") for i, layer in enumerate(data["layers"])]
    laws = out["laws"] = f.mapping(data.get("laws", {}), "laws")
    law = f.mapping(laws.get("D_l"), "laws.D_l", null=True) or {}
    for key in ("rho", "a", "r2"):
        f.number(law.get(key), f"laws.D_l.{key}")
    f.integer(law.get("layers"), "laws.D_l.layers", minimum=0)
    for key in ("plateau_acc_ncc", "plateau_acc_linear_probe"):
        plateau = f.mapping(laws.get(key), f"laws.{key}", null=True)
        if plateau:
            f.integer(plateau.get("depth"), f"laws.{key}.depth", null=False)
            f.label(plateau.get("name"), f"laws.{key}.name")
    cka = out["cka"] = f.mapping(data.get("cka"), "cka", null=True)
    if cka is not None:
        names = f.labels(cka.get("layers"), "cka.layers", null=False)
        f.matrix(cka.get("matrix"), "cka.matrix", rows=len(names), null=False)
    return out


def _layer(f: Fields, layer, where: str) -> dict:
    """One layer: name, depth and metrics are required; the rest has the type nc-probe writes."""
    f.mapping(layer, where)
    for key in ("name", "depth", "metrics"):
        if key not in layer:
            f.fail(where, f"has no {key}")
    f.text(layer["name"], f"{where}.name", null=False)
    f.integer(layer["depth"], f"{where}.depth", null=False)
    f.metrics(layer["metrics"], f"{where}.metrics")
    f.texts(layer.get("warnings"), f"{where}.warnings")
    for key in ("raw_dim", "dim", "projection_seed"):
        f.integer(layer.get(key), f"{where}.{key}")
    f.label(layer.get("pool"), f"{where}.pool")
    f.ids(layer.get("shape"), f"{where}.shape", of="dimensions")
    return layer if "warnings" in layer and layer["warnings"] is not None else {**layer, "warnings": []}


def layer_metrics(report: Report) -> dict:
    """A layer's row: the report's scalar metrics, ``D_l = C * nc1`` and per-class rank means."""
    m = dict(report.metrics)
    C = report.inputs.get("num_classes")
    nc1 = m.get("nc1")
    m["D_l"] = None if nc1 is None or C is None else nc1 * C
    for key in CLASS_MEANS:
        column = report.per_class.get(key)
        values = [v for v in ([] if column is None else column) if v is not None]
        m[f"{key}_mean"] = sum(values) / len(values) if values else None
    return m
