"""Layer reports side by side (``nc-probe compare`` of layer analyses): each model's depth law and plateaus, and
the tidy table of every model's layers, for depth curves drawn on one set of axes.

Inputs are layer-report JSONs (``nc-probe layers --json``) or checkpoints analysed layer by layer with the same
settings. Layers are matched by depth, not by name: two architectures rarely share module names, and the depth
index is what the laws are fitted against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nc_probe.core.errors import InputError, spell
from nc_probe.core.files import atomic_write_text, json_safe, read_json
from nc_probe.reports.layer_report import LayerReport, is_layer_report

LAYER_COMPARISON_SCHEMA = "layer-comparison-1.0"


@dataclass
class LayerComparison:
    """Labelled layer reports, the first the baseline."""

    reports: dict[str, LayerReport]

    @property
    def labels(self) -> list[str]:
        return list(self.reports)

    def laws(self) -> pd.DataFrame:
        """One row per model: layers, the depth law's rho, a, R^2, whether it fits (R^2 >= LAW_FIT_R2), and where
        each accuracy stops gaining (or peaks and falls: :meth:`LayerReport.plateau_text`)."""
        rows = []
        for label, r in self.reports.items():
            law = r.laws.get("D_l") or {}
            row = {"model": label, "layers": len(r.layers), "rho": law.get("rho"), "a": law.get("a"),
                   "r2": law.get("r2")}
            row["law_fits"] = r.law_fits()
            for key in ("acc_ncc", "acc_linear_probe"):
                text = r.plateau_text(key)
                row[f"plateau_{key}"] = None if text == "-" else text
            rows.append(row)
        return pd.DataFrame(rows)

    def tidy(self) -> pd.DataFrame:
        """Every model's tidy table (model, layer, depth, metric, value), models labelled as given."""
        return pd.concat([r.tidy(label) for label, r in self.reports.items()], ignore_index=True)

    def warnings(self) -> list[str]:
        """Every model's warnings (its own and its layers', each once with the layers that gave it), each once and
        led by the labels of the models that gave it."""
        from nc_probe.reports.compare import group_warnings

        return group_warnings({label: r.all_warnings() for label, r in self.reports.items()})

    def to_dict(self) -> dict:
        return json_safe({"kind": "layer-comparison", "schema_version": LAYER_COMPARISON_SCHEMA,
                          "labels": self.labels, "baseline": self.labels[0],
                          "warnings": [spell(w) for w in self.warnings()],
                          "laws": self.laws().to_dict(orient="records"),
                          "reports": {label: r.to_dict() for label, r in self.reports.items()}})

    def save(self, path) -> Path:
        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, allow_nan=False))


def is_layer_json(path: Path) -> bool:
    """Whether ``path`` is a JSON file holding a layer report (a look at its ``kind``). Anything that cannot be read
    as JSON (a pipe, a folder, a file too large, not JSON) is not one: reading it as a report says what is wrong."""
    if Path(path).suffix.lower() != ".json":
        return False
    try:
        return is_layer_report(read_json(path, "layer report", fix=""))
    except InputError:
        return False


def compare_layers(specs, settings=None, *, progress: bool = False, **shortcuts) -> LayerComparison:
    """Layer reports of labelled inputs (label -> path, or ``LABEL=PATH`` strings) side by side: layer-report
    JSONs are read back; checkpoints are analysed with :func:`nc_probe.analyze_layers` under the same
    ``settings`` (or their fields as keywords). A single-layer report or a feature file has no layers and is
    refused by name."""
    from nc_probe.analysis.compare_inputs import parse_specs
    from nc_probe.analysis.inputs import input_kind
    from nc_probe.analysis.layers import analyze_layers
    from nc_probe.core.settings import checkpoint_settings

    paths = {k: Path(str(v)) for k, v in specs.items()} if isinstance(specs, Mapping) else parse_specs(specs)
    if len(paths) < 2:
        raise InputError(f"compare needs at least 2 inputs, got {len(paths)}", fix="pass LABEL=PATH LABEL=PATH")
    settings = checkpoint_settings(settings, **shortcuts)
    reports = {}
    for label, path in paths.items():
        if is_layer_json(path):
            reports[label] = LayerReport.load(path)
            continue
        kind = input_kind(path)
        if kind != "checkpoint":
            what = "a single-layer report" if kind == "report" else "a feature file"
            raise InputError(f"is {what}: it has no layers to set beside the others' layer analyses", path=path,
                             fix="compare it with other single-layer inputs, or pass its checkpoint or its "
                                 "nc-probe layers --json")
        reports[label] = analyze_layers(str(path), settings, progress=progress)
    return LayerComparison(reports)


def wants_layers(paths: Mapping[str, Path], layers: str | None) -> bool:
    """A layer comparison when ``layers`` is given or any input is a layer-report JSON."""
    return layers is not None or any(is_layer_json(p) for p in paths.values())
