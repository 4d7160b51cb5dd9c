"""nc-probe: neural collapse, subspace ranks, MCR^2 coding rates and principal angles of a classifier's features.

Every metric is defined in ``docs/metrics.md``. The public names below are imported on first use, so that
``import nc_probe`` (and the ``nc-probe`` command starting up) does not load torch before it is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

from nc_probe._version import __version__

# public name -> module that defines it
_EXPORTS = {
    "analyze_features": "analysis.features", "analyze_file": "analysis.features", "analyze_store": "analysis.features",
    "report_from_stats": "analysis.from_stats",
    "InputError": "core.errors",
    "analyze_checkpoint": "analysis.pipeline", "extract_features": "analysis.pipeline",
    "inspect_checkpoint": "analysis.inspection",
    "analyze_layers": "analysis.layers", "LayerReport": "reports.layer_report",
    "compare_layers": "analysis.layer_compare",
    "analyze_splits": "analysis.splits", "run_trajectory": "analysis.trajectory",
    "Trajectory": "analysis.trajectory",
    "compare_inputs": "analysis.compare_inputs", "compare_reports": "reports.compare", "Comparison": "reports.compare",
    "LayerComparison": "analysis.layer_compare",
    "PredictionTally": "stats.predictions",
    "NeuralCollapse": "training.metric",
    "Report": "reports.report",
    "DataSettings": "core.settings", "ExtractionSettings": "core.settings", "MetricSettings": "core.settings",
    "ModelSettings": "core.settings", "Settings": "core.settings",
    "ClassStats": "stats.class_stats",
    "FeatureStore": "extract.store", "StoreWriter": "extract.store", "open_store": "extract.store",
    "write_store": "extract.store",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nc_probe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
