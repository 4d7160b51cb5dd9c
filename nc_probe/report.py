"""Report: one dataclass holding an analysis, and its JSON form (``docs/metrics.md``, "Report format").

The JSON keys of ``metrics``, ``per_class`` and ``angles`` are the public metric keys; renaming one is a breaking
change of ``SCHEMA_VERSION``. Absent metrics (no classifier, skipped subspaces) are ``null``.

Matrices over classes (``angle_min``, ``subspace_affinity``, ``mean_cosine``, the per-class ``spectrum`` rows) stay in
the JSON for up to :data:`INLINE_ROWS` classes. Larger ones go to a side file beside the report, ``<name>.npz``
(numpy arrays, read back by :meth:`Report.load`), and the JSON names it in ``matrices_file``; ``pairs`` then holds
what a reader needs without it: summaries and the most extreme pairs.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, spell
from .files import atomic_write_text, json_safe, read_json

SCHEMA_VERSION = "1.1"
INLINE_ROWS = 100  # matrices with more rows than this go to the side file
MATRIX_KEYS = (("angles", "angle_min"), ("angles", "subspace_affinity"), ("per_class", "mean_cosine"),
               ("per_class", "spectrum"))


@dataclass
class Report:
    """The result of one analysis.

    - ``inputs``: source, sha256, num_samples (N), num_classes (C), dim (d), layer, class_names, class_ids (the
      label ids of the classes analysed, the order of every per-class array), empty_classes, zero_features.
    - ``settings``: eps2, rank_tol, subspace_dim, memory_budget, subspace_classes, ...
    - ``metrics``: scalar metrics by key.
    - ``per_class``: lists aligned with ``inputs["class_ids"]`` (``subspace_class_ids`` for subspace arrays).
    - ``angles``: ``angle_min`` and ``subspace_affinity`` matrices over ``angles["class_ids"]``.
    - ``pairs``: summaries of each class-pair quantity (mean, std, quantiles, the most extreme pairs by name).
    - ``timings``: seconds per stage. ``warnings``: things the user should know.
    """

    inputs: dict
    settings: dict
    metrics: dict
    per_class: dict = field(default_factory=dict)
    angles: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    pairs: dict = field(default_factory=dict)
    matrices_file: str | None = None
    schema_version: str = SCHEMA_VERSION

    def to_dict(self) -> dict:
        """Plain JSON data; warnings name settings by parameter (``classes``, not a placeholder). Matrices too
        large for the JSON are ``null`` here (see :meth:`save`)."""
        data = asdict(self)
        data["warnings"] = [spell(str(w)) for w in self.warnings]
        for section, key in MATRIX_KEYS:
            if _outsized(data[section].get(key)):
                data[section][key] = None
        return json_safe(data)

    def side_matrices(self) -> dict[str, np.ndarray]:
        """The matrices that go to the side file instead of the JSON."""
        out = {}
        for section, key in MATRIX_KEYS:
            value = getattr(self, section).get(key)
            if _outsized(value):
                out[key] = _as_array(value)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path) -> Report:
        data = read_json(path, "report", fix="write it with nc-probe analyze --json")
        if not isinstance(data, dict) or "schema_version" not in data or "metrics" not in data:
            raise InputError("is JSON but not an nc-probe report", path=path,
                             fix="write it with nc-probe analyze --json")
        report = cls.from_dict(data)
        side = Path(path).parent / report.matrices_file if report.matrices_file else None
        if side is not None and side.is_file():
            with np.load(side, allow_pickle=False) as z:
                for section, key in MATRIX_KEYS:
                    if key in z.files and getattr(report, section).get(key) is None:
                        getattr(report, section)[key] = z[key]
        return report

    def save(self, path) -> Path:
        """Write the JSON, and the side file of the large matrices beside it (both atomically)."""
        path = Path(path)
        side = self.side_matrices()
        if side:
            name = path.with_suffix("").name + ".matrices.npz"
            buf = io.BytesIO()
            np.savez(buf, **side)  # type: ignore[arg-type]  # numpy types the keyword arrays as allow_pickle
            atomic_write_text(path.parent / name, buf.getvalue())
            self.matrices_file = name
        return atomic_write_text(path, self.to_json())


def _outsized(value) -> bool:
    return value is not None and len(value) > INLINE_ROWS


def _as_array(value) -> np.ndarray:
    """A matrix or a list of ragged rows (spectra) as one float array, NaN where a row is shorter."""
    if isinstance(value, np.ndarray):
        return value
    width = max((len(r) for r in value), default=0)
    out = np.full((len(value), width), np.nan)
    for i, row in enumerate(value):
        out[i, :len(row)] = [np.nan if v is None else v for v in row]
    return out
