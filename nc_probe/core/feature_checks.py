"""What a feature file may hold, checked before it is used: the array names (``H``/``features``, ``y``/``labels``,
``logits``, ``predictions``, ``W``, ``b``, ``class_names``), each array's dtype, and a FeatureStore file's JSON
metadata entries (``class_names``, a JSON list of strings; ``metadata``, a JSON object). Every problem is one
InputError naming the file; text from the file is quoted."""

from __future__ import annotations

import json

from nc_probe.core.errors import InputError
from nc_probe.core.safetensors_file import REWRITE, json_kind
from nc_probe.core.text import quoted

ALIASES = {"H": "features", "features": "features", "y": "labels", "labels": "labels", "logits": "logits",
           "predictions": "predictions",
           "W": "W", "b": "b", "class_names": "class_names"}
#: The dtype kinds each array may have (numpy kind codes; BF16 counts as "f"), and what to store instead.
KINDS = {"features": "fiu", "labels": "fiub", "logits": "fiu", "predictions": "iu", "W": "fiu", "b": "fiu",
         "source": "iub"}
WANTED = {"features": "float32 or float64 features", "labels": "integer class indices 0..C-1",
          "logits": "float logits (N, C), or leave them out",
          "predictions": "one predicted class index per row as integers, or leave them out",
          "W": "the final linear layer's weight as floats", "b": "the bias as floats",
          "source": "one integer id per row: the source sample it is a view of"}
#: Labels at or above this cannot be class indices (int64 arithmetic on them overflows).
MAX_LABEL = 2**62


#: arrays an unlabelled feature file may hold beside its features: each row's source sample (lidar's views)
SOURCE_NAMES = ("source", "views")


def holds_features(names) -> bool:
    """True when the array names include a features and a labels array, in any spelling nc-probe accepts; or a
    features array and nothing but a source/views array (unlabelled features: the label-free measures)."""
    kinds = {ALIASES.get(n) for n in names}
    if "features" in kinds and "labels" in kinds:
        return True
    names = list(names)
    return "features" in kinds and all(ALIASES.get(n) == "features" or n in SOURCE_NAMES for n in names)


def canonical_names(names: list[str], path: str) -> dict[str, str]:
    """Map the file's array names to ours; unknown names and missing features/labels are errors."""
    unknown = [n for n in names if n not in ALIASES]
    if unknown:
        raise InputError(f"unknown array name(s) {_listed(unknown)}", path=path,
                         fix="name the arrays H or features, y or labels, and optionally logits, predictions, W, b, "
                             "class_names")
    mapped = {n: ALIASES[n] for n in names}
    for need, spellings in (("features", "H or features"), ("labels", "y or labels")):
        hits = [n for n, k in mapped.items() if k == need]
        if not hits:
            raise InputError(f"no {need} array (found {_listed(sorted(names)) or 'none'})", path=path,
                             fix=f"name the {need} array {spellings}")
        if len(hits) > 1:
            raise InputError(f"both {quoted(hits[0])} and {quoted(hits[1])} given", path=path,
                             fix=f"keep one {need} array")
    return mapped


def _listed(names: list[str], n: int = 5) -> str:
    """Names read from a file, quoted, the first ``n`` of them."""
    return ", ".join(quoted(x, 40) for x in names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def json_names(text: str | None, path: str) -> list[str] | None:
    """The ``class_names`` metadata entry: a JSON list of strings."""
    if text is None:
        return None
    try:
        names = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        names = None
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise InputError("the class_names metadata is not a JSON list of strings", path=path,
                         fix="store one name per class, e.g. nc_probe.write_store(..., class_names=names)")
    return names


def json_metadata(text: str | None, path: str) -> dict:
    """The ``metadata`` metadata entry: a JSON object."""
    if text is None:
        return {}
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise InputError("the metadata entry is not valid JSON", path=path, fix=REWRITE) from None
    if not isinstance(meta, dict):
        raise InputError(f"the metadata entry is {json_kind(meta)}, not a JSON object", path=path, fix=REWRITE)
    return meta


def check_dtypes(dtypes: dict, path: str) -> None:
    """Each array's dtype is one nc-probe can read as what the array means (see ``KINDS``)."""
    for name, dtype in dtypes.items():
        kind = "f" if isinstance(dtype, str) else dtype.kind  # the one str dtype: BF16
        if kind not in KINDS[name]:
            verb = "has" if name in ("W", "b", "source") else "have"
            raise InputError(f"{name} {verb} dtype {dtype_name(dtype)}", path=path, fix=f"store {WANTED[name]}")


def dtype_name(dtype) -> str:
    """A dtype as a person reads it: "string", "bool", "complex64", ..."""
    if isinstance(dtype, str):
        return dtype
    return {"O": "object (Python objects)", "U": "string", "S": "bytes", "V": "structured", "b": "bool"}.get(
        dtype.kind, str(dtype))
