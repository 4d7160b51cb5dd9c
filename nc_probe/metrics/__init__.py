"""Metrics: pure functions of float64 statistics, one module per family (``docs/metrics.md`` defines each key).

:mod:`~nc_probe.metrics.catalog` lists every public key with its meaning and direction.
"""

from .catalog import CATALOG, METRIC_DOCS, PAIR_KEYS, PER_CLASS_KEYS, SCALAR_KEYS, Metric, metric

__all__ = ["CATALOG", "METRIC_DOCS", "PAIR_KEYS", "PER_CLASS_KEYS", "SCALAR_KEYS", "Metric", "metric"]
