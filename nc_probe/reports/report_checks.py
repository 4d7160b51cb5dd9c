"""The checks of a report's JSON (:func:`check_report`), used by :meth:`nc_probe.reports.report.Report.from_dict`: every
field nc-probe writes has the type it writes, every per-class column is as long as its class ids, every matrix is
square over its classes, and ``matrices_file`` names a file beside the report and nothing else. Reports of schema
1.0 (before the pair summaries and side files) and 1.1 read alike."""

from __future__ import annotations

import re
from typing import Any

from nc_probe.core.errors import InputError, spell
from nc_probe.core.json_checks import (
    NAME,
    Fields,
    check_inputs,
    check_settings,
    check_timings,
    kind_of,
    label_check,
    number_check,
)
from nc_probe.core.settings import Settings
from nc_probe.core.text import quoted

REPORT_SCHEMA = re.compile(r"1\.\d{1,4}")  # 1.0 (the first reports) and 1.1 (pairs, side files) read alike
#: JSON files of nc-probe that are not single reports, by their ``kind``, and how to use them instead.
OTHER_KINDS = {
    "layers": ("a layer report (nc-probe layers --json)", "compare it with other layer reports: nc-probe compare "
               "a=layers1.json b=layers2.json"),
    "layer-comparison": ("a comparison of layer reports (nc-probe compare --json)", "pass the reports it compares"),
    "trajectory": ("a trajectory (nc-probe trajectory --json)", "pass one checkpoint's report, e.g. from the "
                   "reports folder of nc-probe trajectory --out"),
    "trajectory-point": ("the reports of one checkpoint kept by nc-probe trajectory --out", "pass one checkpoint's "
                         "report, written with nc-probe analyze --json"),
}
TOP_PAIR = {**dict.fromkeys(("a", "b", "a_name", "b_name"), label_check), "value": number_check}
CLASS_COLUMNS = ("n", "acc_model", "acc_ncc", "within_class_variance", "mean_norm", "zero_features")
SUBSPACE_COLUMNS = ("rank_energy95", "rank_energy99", "rank_effective", "rank_numerical", "coding_rate_class",
                    "basis_dim")


def check_report(data: Any, path: object | None = None, fix: str = "write it with nc-probe analyze --json") -> dict:
    """The fields of a report's JSON data, every value checked (see the module docstring); absent ``inputs``,
    ``settings`` and sections are empty. One InputError names ``path``, the field and ``fix``."""
    f = Fields(path, fix)
    if not isinstance(data, dict):
        f.fail("", f"is JSON ({kind_of(data)}) but not an nc-probe report")
    kind = data.get("kind")
    if isinstance(kind, str) and kind in OTHER_KINDS:
        what, instead = OTHER_KINDS[kind]
        raise InputError(f"is {what}, not a single report", path=path, fix=instead)
    missing = [key for key in ("schema_version", "metrics") if key not in data]
    if missing:
        f.fail("", f"is JSON but not an nc-probe report (it has no {' and no '.join(missing)})")
    version = data["schema_version"]
    if not isinstance(version, str) or not REPORT_SCHEMA.fullmatch(version):
        shown = f"{quoted(version)} is" if isinstance(version, str) else f"is {kind_of(version)},"
        raise InputError(f"schema_version {shown} not a report schema this nc-probe reads (1.x)", path=path,
                         fix="analyze the input again with this version of nc-probe, or upgrade nc-probe")
    out = dict(data)
    out["inputs"] = check_inputs(f, data.get("inputs", {}))
    out["settings"] = check_typed_settings(f, data.get("settings", {}))
    f.metrics(data["metrics"])
    out["per_class"] = _per_class(f, data.get("per_class", {}), out["inputs"].get("dim"))
    out["angles"] = _angles(f, data.get("angles", {}))
    out["pairs"] = _pairs(f, data.get("pairs", {}))
    out["timings"] = check_timings(f, data.get("timings", {}))
    out["warnings"] = f.texts(data.get("warnings", []), "warnings", null=False)
    out["matrices_file"] = side_file_name(f, data.get("matrices_file"))
    return out


def check_typed_settings(f: Fields, settings: Any) -> dict:
    """``settings``: each value of the type nc-probe writes, and together settings that
    :meth:`~nc_probe.core.settings.Settings.from_dict` accepts (eps2 positive, a known amp, ...), so that
    ``report.settings_typed`` of a report read back cannot fail. Keys this version does not know are kept."""
    checked = check_settings(f, settings)
    try:
        Settings.from_dict(checked)
    except InputError as e:
        f.fail("settings", f"are not settings nc-probe writes: {spell(e.message)}")
    return checked


def side_file_name(f: Fields, name: Any) -> str | None:
    """``matrices_file``: null, or the bare name of a ``.npz`` file beside the report (no folder, no ``..``)."""
    if name is None:
        return None
    f.text(name, "matrices_file")
    if len(name) <= len(".npz") or not name.endswith(".npz") or any(c in name for c in "/\\:\0"):
        f.fail("matrices_file", f"{quoted(name)} is not the bare name of a .npz file beside the report")
    return name


def _per_class(f: Fields, pc: Any, dim: Any) -> dict:
    """Columns as long as their class ids; ``mean_cosine`` C x C, ``spectrum`` a row of at most d per subspace
    class, ``pca2d`` points with a label each."""
    f.mapping(pc, "per_class")
    ids = f.ids(pc.get("class_ids"), "per_class.class_ids")
    sub = f.ids(pc.get("subspace_class_ids"), "per_class.subspace_class_ids")
    n, m = len(ids or ()), len(sub or ())
    for key in CLASS_COLUMNS:
        f.numbers(pc.get(key), f"per_class.{key}", length=n)
    for key in SUBSPACE_COLUMNS:
        f.numbers(pc.get(key), f"per_class.{key}", length=m)
    f.matrix(pc.get("mean_cosine"), "per_class.mean_cosine", rows=n)
    spectrum = f.matrix(pc.get("spectrum"), "per_class.spectrum", rows=m, square=False)
    if spectrum and isinstance(dim, int) and max(len(r) for r in spectrum) > max(dim, 1):
        f.fail("per_class.spectrum", f"has rows longer than the feature dimension {dim}")
    pca = f.mapping(pc.get("pca2d"), "per_class.pca2d", null=True)
    if pca:
        points = f.matrix(pca.get("points"), "per_class.pca2d.points", square=False)
        for i, p in enumerate(points or ()):
            if len(p) != 2:
                f.fail(f"per_class.pca2d.points[{i}]", f"has {len(p)} coordinates, not 2")
        f.ids(pca.get("labels"), "per_class.pca2d.labels", length=len(points) if points is not None else None,
              of="points")
        f.numbers(pca.get("explained_variance_ratio"), "per_class.pca2d.explained_variance_ratio", length=2,
                  of="components")
        for key in ("num_samples", "seed"):
            f.integer(pca.get(key), f"per_class.pca2d.{key}")
    # a baseline or a hand-made report has no per-class section: no classes, as the renderers read it
    return pc if "class_ids" in pc else {**pc, "class_ids": []}


def _angles(f: Fields, angles: Any) -> dict:
    f.mapping(angles, "angles")
    ids = f.ids(angles.get("class_ids"), "angles.class_ids")
    for key in ("angle_min", "subspace_affinity"):
        f.matrix(angles.get(key), f"angles.{key}", rows=len(ids or ()))
    f.integer(angles.get("forced_zero_pairs"), "angles.forced_zero_pairs", minimum=0)
    return angles


def _pairs(f: Fields, pairs: Any) -> dict:
    """Each class-pair quantity's summary: count, statistics, quantiles and the most extreme pairs."""
    f.mapping(pairs, "pairs")
    for key, s in pairs.items():
        if not NAME.fullmatch(key):
            f.fail("pairs", f"has the key {quoted(key)}, which is not a class-pair quantity")
        where = f"pairs.{key}"
        f.mapping(s, where, null=True)
        if s is None:
            continue
        f.integer(s.get("count"), f"{where}.count", minimum=0)
        for stat in ("mean", "std", "min", "max"):
            f.number(s.get(stat), f"{where}.{stat}")
        quantiles = f.mapping(s.get("quantiles"), f"{where}.quantiles", null=True) or {}
        for q, v in quantiles.items():
            if not _is_fraction(q):
                f.fail(f"{where}.quantiles", f"has the key {quoted(q)}, which is not a quantile")
            f.number(v, f"{where}.quantiles.{q}")
        for text in ("quantile_method", "top_kind"):
            f.text(s.get(text), f"{where}.{text}")
        for i, t in enumerate(f.sequence(s.get("top"), f"{where}.top") or ()):
            f.mapping(t, f"{where}.top[{i}]")
            f.fields(t, f"{where}.top[{i}]", TOP_PAIR)
    return pairs


def _is_fraction(text: str) -> bool:
    try:
        q = float(text)
    except ValueError:
        return False
    return 0.0 <= q <= 1.0
