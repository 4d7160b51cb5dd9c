"""Metrics: pure functions from arrays (class means, Grams, bases, predictions) to numbers, one module per family
(docs/metrics.md defines each key) - the neural collapse measures, the literature's variants, subspace ranks,
principal angles, coding rates, the linear probe, CKA, the depth law, label-free rank measures. No state, no files,
no passes over data: a new metric's formula goes here and its key into :mod:`~nc_probe.metrics.catalog`, which lists
every public key with its meaning and direction.
"""

from nc_probe.metrics.catalog import CATALOG, METRIC_DOCS, PAIR_KEYS, PER_CLASS_KEYS, SCALAR_KEYS, Metric, metric

__all__ = ["CATALOG", "METRIC_DOCS", "PAIR_KEYS", "PER_CLASS_KEYS", "SCALAR_KEYS", "Metric", "metric"]
