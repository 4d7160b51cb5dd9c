"""Report: one dataclass holding an analysis, and its JSON form (``docs/metrics.md``, "Report format").

The JSON keys of ``metrics``, ``per_class`` and ``angles`` are the public metric keys of the spec; renaming one
is a breaking change of ``SCHEMA_VERSION``. Absent metrics (no classifier, skipped subspaces) are ``null``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InputError, spell
from .files import atomic_write_text, json_safe

SCHEMA_VERSION = "1.0"


@dataclass
class Report:
    """The result of one analysis.

    - ``inputs``: source, sha256, num_samples (N), num_classes (C), dim (d), layer, class_names, class_ids (the
      label ids of the classes that have samples, the order of every per-class array), empty_classes,
      zero_features.
    - ``settings``: eps2, rank_tol, subspace_dim, memory_budget, subspace_classes.
    - ``metrics``: scalar metrics by spec key.
    - ``per_class``: lists aligned with ``inputs["class_ids"]`` (``subspace_class_ids`` for subspace arrays).
    - ``angles``: ``angle_min`` and ``subspace_affinity`` matrices over ``per_class["subspace_class_ids"]``.
    - ``timings``: seconds per stage. ``warnings``: things the user should know.
    """

    inputs: dict
    settings: dict
    metrics: dict
    per_class: dict = field(default_factory=dict)
    angles: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    schema_version: str = SCHEMA_VERSION

    def to_dict(self) -> dict:
        """Plain JSON data; warnings name settings by parameter (``classes``, not a placeholder)."""
        data = asdict(self)
        data["warnings"] = [spell(str(w)) for w in self.warnings]
        return json_safe(data)

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
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"not a readable report JSON ({e.__class__.__name__})", path=path,
                             fix="write it with nc-probe analyze --json") from None
        if not isinstance(data, dict) or "schema_version" not in data or "metrics" not in data:
            raise InputError("is JSON but not an nc-probe report", path=path,
                             fix="write it with nc-probe analyze --json")
        return cls.from_dict(data)

    def save(self, path) -> Path:
        return atomic_write_text(path, self.to_json())
