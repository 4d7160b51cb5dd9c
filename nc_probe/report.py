"""Report: one dataclass holding an analysis, and its JSON form (``docs/metrics.md``, "Report format").

The JSON keys of ``metrics``, ``per_class`` and ``angles`` are the public metric keys of the spec; renaming one
is a breaking change of ``SCHEMA_VERSION``. Absent metrics (no classifier, skipped subspaces) are ``null``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InputError

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
        return _json_safe(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> "Report":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path) -> "Report":
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


def _json_safe(obj):
    """NaN/Inf are not JSON: they become null (absent), and numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_text(path, text: str | bytes) -> Path:
    """Write text (or bytes) via a temp file in the same folder and rename it into place, so no half-written file
    is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
