"""nc-probe: neural collapse, subspace ranks, MCR^2 coding rates and principal angles of a classifier's features.

Every metric is defined in ``docs/metrics.md``. The public names below are imported on first use, so that
``import nc_probe`` (and the ``nc-probe`` command starting up) does not load torch before it is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

# public name -> module that defines it
_EXPORTS = {
    "analyze_features": "analysis", "analyze_file": "analysis", "analyze_store": "analysis",
    "report_from_stats": "compute",
    "InputError": "errors",
    "analyze_checkpoint": "pipeline", "extract_features": "pipeline",
    "inspect_checkpoint": "inspection",
    "analyze_layers": "layer_analysis", "LayerReport": "layer_report", "compare_layers": "layer_compare",
    "analyze_splits": "splits", "run_trajectory": "trajectory",
    "PredictionTally": "metrics.predictions",
    "Report": "report",
    "DataSettings": "settings", "ExtractionSettings": "settings", "MetricSettings": "settings",
    "ModelSettings": "settings", "Settings": "settings",
    "ClassStats": "stats",
    "FeatureStore": "store", "StoreWriter": "store", "open_store": "store", "write_store": "store",
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
