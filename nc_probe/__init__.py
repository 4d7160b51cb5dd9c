"""nc-probe: neural collapse, subspace ranks, MCR^2 coding rates and principal angles of a classifier's features.

The metric contract is ``shared/metrics-spec.md`` of the project; :mod:`nc_probe.metrics` cites it per metric.
"""

__version__ = "0.1.0"

from .analysis import analyze_features, analyze_file, analyze_store  # noqa: E402
from .errors import InputError  # noqa: E402
from .pipeline import analyze_checkpoint, extract_features, inspect_checkpoint  # noqa: E402
from .report import Report  # noqa: E402
from .stats import ClassStats  # noqa: E402
from .store import FeatureStore, StoreWriter, open_store, write_store  # noqa: E402

__all__ = ["ClassStats", "FeatureStore", "InputError", "Report", "StoreWriter", "__version__", "analyze_checkpoint",
           "analyze_features", "analyze_file", "analyze_store", "extract_features", "inspect_checkpoint", "open_store",
           "write_store"]
