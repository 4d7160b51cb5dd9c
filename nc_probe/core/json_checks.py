"""Type checks of the JSON that nc-probe reads back: reports, baselines, layer reports and the trajectory's resume
cache (the gate's TOML values are checked in :mod:`nc_probe.reports.gate`).

A file can come from anywhere, so every value a renderer, the gate or a comparison uses is checked for its type
before it gets there: a metric is a finite number (or null), a per-class column is a list of numbers as long as the
classes, a class name is text, and so on. The first value that is not what nc-probe writes is one
:class:`~nc_probe.core.errors.InputError` naming the file, the field (``metrics.nc1``, ``per_class.n[3]``) and what to
do. Keys that nc-probe does not know are left as they are, except metric names, which must look like metric names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from nc_probe.core.errors import InputError
from nc_probe.core.text import quoted

INT_LIMIT = 2**63 - 1  # integers beyond int64 are not counts, ids or sizes that nc-probe writes
TEXT_LIMIT = 100_000  # characters of one text value (a path, a class name, a warning)
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")  # a metric key


def kind_of(value: Any) -> str:
    """What a JSON value is, in words: ``a list``, ``an object``, ``null``, ``an integer too large for a float``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return "an integer too large for a float" if _too_big(value) else "an integer"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else "a non-finite number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _too_big(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return True
    return False


class Fields:
    """The checks of one file's JSON. ``path``: the file (None for data that comes from no file); ``fix``: what to
    do about a value of the wrong type (e.g. "write it with nc-probe analyze --json")."""

    def __init__(self, path: object | None, fix: str):
        self.path = path
        self.fix = fix

    def fail(self, field: str, problem: str) -> NoReturn:
        raise InputError(f"{field} {problem}" if field else problem, path=self.path, fix=self.fix)

    def wrong(self, value: Any, field: str, wanted: str) -> NoReturn:
        self.fail(field, f"is {kind_of(value)}, not {wanted}")

    # ------------------------------------------------------------------------------------------------ scalars
    def number(self, value: Any, field: str, *, null: bool = True, boolean: bool = False) -> Any:
        """A finite number (int or float); None when ``null``, True/False when ``boolean``."""
        if value is None and null:
            return value
        if isinstance(value, bool):
            if boolean:
                return value
        elif isinstance(value, int):
            if abs(value) <= INT_LIMIT or not _too_big(value):
                return value
            self.fail(field, "is an integer too large for a float")
        elif isinstance(value, float):
            if math.isfinite(value):
                return value
            self.fail(field, "is not a finite number (nc-probe writes an absent value as null)")
        self.wrong(value, field, "a number" + (" or null" if null else ""))

    def integer(self, value: Any, field: str, *, null: bool = True, minimum: int | None = None) -> Any:
        """An int (not a bool) within int64, at least ``minimum``; None when ``null``."""
        if value is None and null:
            return value
        if not isinstance(value, int) or isinstance(value, bool):
            self.wrong(value, field, "an integer" + (" or null" if null else ""))
        if abs(value) > INT_LIMIT:
            self.fail(field, "is an integer out of range")
        if minimum is not None and value < minimum:
            self.fail(field, f"is {value}, less than {minimum}")
        return value

    def flag(self, value: Any, field: str, *, null: bool = True) -> Any:
        if value is None and null or isinstance(value, bool):
            return value
        self.wrong(value, field, "true or false")

    def text(self, value: Any, field: str, *, null: bool = True) -> Any:
        """A string of at most TEXT_LIMIT characters; None when ``null``."""
        if value is None and null:
            return value
        if not isinstance(value, str):
            self.wrong(value, field, "a string" + (" or null" if null else ""))
        if len(value) > TEXT_LIMIT:
            self.fail(field, f"is a string of {len(value):,} characters, more than nc-probe writes")
        return value

    def label(self, value: Any, field: str) -> Any:
        """A value shown as text (a class name, a layer, a data spec): a string, a number, a bool or null, never a
        list or an object."""
        if isinstance(value, str):
            return self.text(value, field)
        if value is None or isinstance(value, bool):
            return value
        if not isinstance(value, (int, float)):
            self.wrong(value, field, "text or a number")
        return self.number(value, field, null=False)

    # ------------------------------------------------------------------------------------------------ containers
    def mapping(self, value: Any, field: str, *, null: bool = False) -> Any:
        if value is None and null:
            return value
        if not isinstance(value, dict):
            self.wrong(value, field, "an object" + (" or null" if null else ""))
        return value

    def sequence(self, value: Any, field: str, *, null: bool = True, length: int | None = None,
                 of: str = "classes") -> Any:
        """A list (None when ``null``), of ``length`` items (one per ``of``) when given."""
        if value is None and null:
            return value
        if not isinstance(value, list):
            self.wrong(value, field, "a list" + (" or null" if null else ""))
        if length is not None and len(value) != length:
            self.fail(field, f"has {len(value):,} entries for {length:,} {of}")
        return value

    def numbers(self, value: Any, field: str, *, null: bool = True, length: int | None = None,
                integers: bool = False, absent: bool = True, of: str = "classes") -> Any:
        """A list of numbers (ints when ``integers``; null entries when ``absent``)."""
        items = self.sequence(value, field, null=null, length=length, of=of)
        for i, v in enumerate(items or ()):
            if v is None and absent:
                continue
            if integers:
                self.integer(v, f"{field}[{i}]", null=False)
            else:
                self.number(v, f"{field}[{i}]", null=False)
        return items

    def ids(self, value: Any, field: str, *, null: bool = True, length: int | None = None,
            of: str = "classes") -> Any:
        """Class ids: a list of integers."""
        return self.numbers(value, field, null=null, length=length, integers=True, absent=False, of=of)

    def labels(self, value: Any, field: str, *, null: bool = True, length: int | None = None) -> Any:
        items = self.sequence(value, field, null=null, length=length)
        for i, v in enumerate(items or ()):
            self.label(v, f"{field}[{i}]")
        return items

    def texts(self, value: Any, field: str, *, null: bool = True) -> Any:
        items = self.sequence(value, field, null=null)
        for i, v in enumerate(items or ()):
            self.text(v, f"{field}[{i}]", null=False)
        return items

    def matrix(self, value: Any, field: str, *, rows: int | None = None, square: bool = True,
               null: bool = True) -> Any:
        """A list of rows of numbers (null entries allowed): ``rows`` rows, each of ``rows`` entries when
        ``square``, else of any length (the ragged per-class spectra)."""
        items = self.sequence(value, field, null=null)
        if items is None:
            return items
        if rows is not None and len(items) != rows:
            self.fail(field, f"has {len(items):,} rows for {rows:,} classes")
        for i, row in enumerate(items):
            self.numbers(row, f"{field}[{i}]", null=False, length=len(items) if square else None)
        return items

    def metrics(self, value: Any, field: str = "metrics") -> dict:
        """Scalar metrics: metric names to a finite number, true/false or null."""
        self.mapping(value, field)
        for key, v in value.items():
            if not NAME.fullmatch(key):
                self.fail(field, f"has the key {quoted(key)}, which is not a metric name")
            self.number(v, f"{field}.{key}", boolean=True)
        return value

    def fields(self, data: dict, section: str, types: dict) -> None:
        """Check the keys of ``data`` that ``types`` names (key -> check); other keys are left as they are."""
        for key, check in types.items():
            if key in data:
                check(self, data[key], f"{section}.{key}" if section else key)


def _count(f: Fields, v: Any, field: str) -> Any:
    return f.integer(v, field, minimum=0)


def _ids(f: Fields, v: Any, field: str) -> Any:
    return f.ids(v, field)


def number_check(f: Fields, v: Any, field: str) -> Any:
    return f.number(v, field)


def label_check(f: Fields, v: Any, field: str) -> Any:
    return f.label(v, field)


def _flag(f: Fields, v: Any, field: str) -> Any:
    return f.flag(v, field)


def _labels(f: Fields, v: Any, field: str) -> Any:
    return f.labels(v, field)


def _texts(f: Fields, v: Any, field: str) -> Any:
    return f.texts(v, field)


def _object(f: Fields, v: Any, field: str) -> Any:
    return f.mapping(v, field, null=True)


def _size(f: Fields, v: Any, field: str) -> Any:
    """A preprocessing size: null, a positive integer (the shorter side, or a square crop) or ``[height, width]``."""
    if isinstance(v, list):
        f.ids(v, field, length=2, of="sides (height, width)")
        if min(v) < 1:
            f.fail(field, "has a side smaller than 1")
        return v
    return f.integer(v, field, minimum=1)


def _preprocessing(f: Fields, v: Any, field: str) -> Any:
    """``inputs.preprocessing`` (:meth:`nc_probe.data.preprocessing.Preprocessing.record`): null, or an object whose
    source and interpolation are text, resize and crop sizes, mean and std lists of numbers, rescale a number and
    overridden a list of flag names."""
    f.mapping(v, field, null=True)
    if v is None:
        return v
    for key in ("source", "interpolation"):
        f.text(v.get(key), f"{field}.{key}")
    for key in ("resize", "crop"):
        _size(f, v.get(key), f"{field}.{key}")
    for key in ("mean", "std"):
        values = f.numbers(v.get(key), f"{field}.{key}", absent=False)
        if values is not None and not 1 <= len(values) <= 16:
            f.fail(f"{field}.{key}", f"has {len(values)} values, not one per channel")
    f.number(v.get("rescale"), f"{field}.rescale")
    f.texts(v.get("overridden"), f"{field}.overridden")
    return v


#: The ``inputs`` of a report or a baseline, by key.
INPUTS = {
    **dict.fromkeys(("num_samples", "num_classes", "num_labels", "dim", "zero_features"), _count),
    **dict.fromkeys(("source", "sha256", "layer", "nc_probe_version", "data", "split", "format", "arch",
                     "features_file", "label", "reference_split"), label_check),
    **dict.fromkeys(("class_ids", "empty_classes", "excluded_classes"), _ids),
    "has_classifier": _flag, "has_logits": _flag, "class_names": _labels, "metadata": _object, "notes": _texts,
    "preprocessing": _preprocessing,
}

#: The ``settings`` of a report or a baseline, by key.
SETTINGS = {
    **dict.fromkeys(("subspace_dim", "memory_budget", "chunk_rows", "min_class_count", "angle_classes",
                     "batch_size", "workers"), _count),
    **dict.fromkeys(("device", "angle_precision", "amp"), label_check),
    "eps2": number_check, "rank_tol": number_check, "subspace_classes": _ids, "linear_probe": _flag,
    "nearest_subspace": _flag, "mahalanobis": _flag,
}


def check_inputs(f: Fields, inputs: Any, section: str = "inputs") -> dict:
    """The ``inputs`` of a report, a baseline or a layer report; class names as many as class ids."""
    f.mapping(inputs, section)
    f.fields(inputs, section, INPUTS)
    names, ids = inputs.get("class_names"), inputs.get("class_ids")
    if isinstance(names, list) and isinstance(ids, list) and len(names) != len(ids):
        f.fail(f"{section}.class_names", f"has {len(names):,} names for {len(ids):,} class ids")
    return inputs


def check_settings(f: Fields, settings: Any, section: str = "settings") -> dict:
    f.mapping(settings, section)
    f.fields(settings, section, SETTINGS)
    return settings


def check_timings(f: Fields, timings: Any, section: str = "timings") -> dict:
    f.mapping(timings, section)
    for key, v in timings.items():
        f.number(v, f"{section}.{quoted(key, 40) if not NAME.fullmatch(key) else key}")
    return timings


def check_baseline(data: Any, path: object | None, fix: str, format_name: str) -> dict:
    """A baseline's JSON data (``nc-probe baseline``): its metrics, inputs and settings checked as a report's;
    absent inputs and settings are empty."""
    f = Fields(path, fix)
    if not isinstance(data, dict) or data.get("format") != format_name or "metrics" not in data:
        f.fail("", "is JSON but neither an nc-probe baseline nor a report")
    inputs, settings = data.get("inputs"), data.get("settings")
    return {**data, "metrics": f.metrics(data["metrics"]), "inputs": check_inputs(f, {} if inputs is None else inputs),
            "settings": check_settings(f, {} if settings is None else settings)}
