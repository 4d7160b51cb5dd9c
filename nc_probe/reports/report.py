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
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nc_probe.core.errors import InputError, spell
from nc_probe.core.files import atomic_write_text, json_safe, open_regular, read_json
from nc_probe.core.json_checks import Fields
from nc_probe.core.settings import Settings
from nc_probe.core.text import quoted
from nc_probe.reports.report_checks import check_report

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = "1.1"
REPORT_FIX = "write it with nc-probe analyze --json"
SIDE_FIX = "write the report again with nc-probe analyze --json, which writes the side file beside it"
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

    Tables: :meth:`tidy` (one row per scalar metric, with its unit and direction), :meth:`frame` (one row, one column
    per metric: concatenate several) and :meth:`per_class_frame`; the settings as typed objects:
    :attr:`settings_typed`.
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

    @property
    def settings_typed(self) -> Settings:
        """The settings this report was made with, as the :class:`~nc_probe.core.settings.Settings` that made it
        (``report.settings_typed.metrics.eps2``): :meth:`Settings.from_dict` of :attr:`settings`, validated; keys
        this version does not know are left out (``Settings.from_dict(report.settings, notes=[])`` names them)."""
        return Settings.from_dict(self.settings)

    def tidy(self) -> pd.DataFrame:
        """One row per scalar metric: metric, value (NaN for null), unit, direction, word, meaning."""
        from nc_probe.reports.frames import tidy_frame

        return tidy_frame(self)

    def frame(self) -> pd.DataFrame:
        """One row: source, layer, num_samples, num_classes, dim and one column per scalar metric."""
        from nc_probe.reports.frames import wide_frame

        return wide_frame(self)

    def per_class_frame(self) -> pd.DataFrame:
        """One row per class: class_id, class_name, n, the per-class metrics (NaN where not computed)."""
        from nc_probe.reports.frames import per_class_frame

        return per_class_frame(self)

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
    def from_dict(cls, data: dict, *, path=None) -> Report:
        """A report from its JSON data (this or an older 1.x schema), every value checked for its type first
        (:func:`nc_probe.core.json_checks.check_report`): InputError names ``path``, the field and the fix."""
        checked = check_report(data, path)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in checked.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path) -> Report:
        """Read a report JSON (a regular file of at most 256 MiB) and the side file of its large matrices."""
        report = cls.from_dict(read_json(path, "report", fix=REPORT_FIX), path=path)
        if report.matrices_file is not None:
            _read_side_file(report, path)
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


def _read_side_file(report: Report, path) -> None:
    """Fill the report's absent matrices from its side file: a bare ``.npz`` name in the report's folder (checked by
    :func:`check_report`), a regular file, no pickles, each array a float matrix of the shape its class ids give.
    A side file that is not there leaves the matrices absent (the pair summaries stand in for them)."""
    name = str(report.matrices_file)
    f = Fields(path, SIDE_FIX)
    handle = open_regular(Path(path).parent / name, "matrices (.npz)", SIDE_FIX, missing=None)
    if handle is None:
        return
    with handle:
        try:
            with zipfile.ZipFile(handle) as archive:
                for section, key in MATRIX_KEYS:
                    if f"{key}.npy" in archive.namelist() and getattr(report, section).get(key) is None:
                        getattr(report, section)[key] = _side_matrix(archive, report, section, key, f)
        except InputError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as e:
            why = "holds pickled objects" if "pickle" in str(e) else "is not a readable .npz archive"
            f.fail("matrices_file", f"{quoted(name)} {why}")


def _side_matrix(archive: zipfile.ZipFile, report: Report, section: str, key: str, f: Fields) -> np.ndarray:
    """One matrix of the side file, its header checked before its data is read: a float (or integer) array of
    rows x rows (``spectrum``: rows x at most the feature dimension)."""
    ids = (report.per_class.get("subspace_class_ids") if key == "spectrum"
           else getattr(report, section).get("class_ids")) or []
    with archive.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(member)
    dim = report.inputs.get("dim")
    wide = key == "spectrum" and len(shape) == 2 and (dim is None or shape[1] <= dim)
    if dtype.kind not in "fiu" or len(shape) != 2 or shape[0] != len(ids) or not (wide or shape[1] == len(ids)):
        f.fail(f"matrices_file {quoted(report.matrices_file)}",
               f"holds {key} with dtype {dtype} and shape {shape}, not a {len(ids)} x "
               f"{'d' if key == 'spectrum' else len(ids)} matrix of numbers")
    with archive.open(f"{key}.npy") as member:
        return np.lib.format.read_array(member, allow_pickle=False)
