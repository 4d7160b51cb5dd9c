"""What a name read from a file may resolve to without the user's consent.

A checkpoint's metadata may name the architecture that rebuilds it (``arch``, ``arch_kwargs``) and the data it was
trained on (``data``). A name taken from a file that nc-probe would import, walk attribute by attribute, or call,
runs whatever code the file's author chose (``nc_probe.load.checkpoint:os.system`` is a valid import path). So names
from a file resolve only through exact allowlists, checked here before anything is imported:

- architectures: the sample factories by exact name (:data:`SAMPLE_FACTORIES`), ``torchvision:NAME`` through
  ``torchvision.models``' registry and ``timm:NAME`` through timm's, where NAME is a plain model name;
- keyword arguments of those factories: plain JSON values, none that makes a registry fetch or read files
  (:data:`FETCHING_KWARGS`);
- data: ``sample:NAME`` or a path of a data
  file or folder (arrays are read without unpickling, images decoded by Pillow).

Anything else (an import path, a ``file.py:function``, builtins, os, subprocess) needs the user's consent: the same
string passed as ``--arch`` / ``--data``, or ``--trust-checkpoint``. The refusal names the code the file asked for.
Names the user types are theirs to choose and are not restricted here.
"""

from __future__ import annotations

import math
import os
import re

from nc_probe.core.errors import InputError
from nc_probe.core.text import quoted

#: The factories of the shipped samples, the only import paths a file may name by itself.
SAMPLE_FACTORIES = ("nc_probe.samples:digits_net", "nc_probe.samples:digits_deep_net")
#: Model names as the registries spell them: ``resnet18``, ``vit_base_patch16_224.augreg_in21k``. No ``:`` (timm
#: reads ``hf-hub:`` names from the network), no ``/``, no leading dot.
REGISTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*")
#: Factory keyword arguments that download weights or read files; dropped whatever their source (a checkpoint
#: supplies its own weights, and nothing may touch the network).
FETCHING_KWARGS = ("weights", "pretrained", "weights_backbone", "pretrained_backbone", "pretrained_cfg",
                   "pretrained_cfg_overlay", "checkpoint_path", "cache_dir", "pretrained_strict")

CONSENT = "code named by a file is not run without your consent"
#: How much of a name a refusal shows: enough for a path, which the user may want to type as consent.
NAME_LIMIT = 200
#: The fixes of those refusals. The file's own words are never part of nc-probe's advice: the message quotes them.
CONFIRM_ARCH = "if you trust that code, type the same name as {arch}, or pass {trust_checkpoint=True}"
CONFIRM_DATA = "if you trust that code, type the same spec as {data}, or pass {trust_checkpoint=True}"


def registry_arch(arch: str) -> tuple[str, str] | None:
    """``(scheme, name)`` when ``arch`` is ``torchvision:NAME`` or ``timm:NAME`` with a plain registry name."""
    scheme, sep, name = arch.partition(":")
    if sep and scheme in ("torchvision", "timm") and REGISTRY_NAME.fullmatch(name):
        return scheme, name
    return None


def is_allowlisted_arch(arch) -> bool:
    """Whether an architecture named by a file may be built without consent."""
    return isinstance(arch, str) and (arch in SAMPLE_FACTORIES or registry_arch(arch) is not None)


def check_file_arch(arch, kwargs, *, path) -> None:
    """Refuse an architecture (and its keyword arguments) read from the file ``path`` unless allowlisted."""
    if not isinstance(arch, str):
        raise InputError(f"names its architecture as a {type(arch).__name__}, not a string", path=path,
                         fix="pass {arch}")
    if not is_allowlisted_arch(arch):
        raise InputError(f"names its architecture {quoted(arch, NAME_LIMIT)}, which nc-probe would import and call; "
                         f"{CONSENT}",
                         path=path, fix=CONFIRM_ARCH)
    bad = [k for k, v in (kwargs or {}).items() if not isinstance(k, str) or not _plain(v)]
    if bad:
        raise InputError(f"gives {quoted(arch)} keyword arguments that are not plain values "
                         f"({', '.join(quoted(k) for k in bad[:5])})", path=path,
                         fix="pass {arch_kwargs} yourself (or {trust_checkpoint=True})")


def _plain(value, depth: int = 0) -> bool:
    """JSON-like data: what a factory argument read from a file may be."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if depth > 4:
        return False
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def drop_fetching_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in FETCHING_KWARGS}


def is_allowlisted_data(spec) -> bool:
    """Whether a data spec read from a file may be opened without consent: shipped samples, a torchvision dataset
    class, or a path (an existing one, or one that merely looks like a path: opening it then fails with "no such
    file", which runs nothing). What remains, ``module:function`` and ``file.py:function``, is code."""
    if not isinstance(spec, str) or not spec:
        return False
    if spec.startswith("sample:"):
        return True  # open_data knows the sample names; an unknown one is an error, not code
    if spec.startswith("torchvision:"):
        return False  # some torchvision dataset classes unpickle the files under ROOT: the user's call
    if os.path.exists(spec):
        return not spec.endswith(".py")
    return ":" not in spec


def check_file_data(spec, *, path) -> None:
    """Refuse a data spec read from the file ``path`` unless allowlisted."""
    if is_allowlisted_data(spec):
        return
    if not isinstance(spec, str):
        raise InputError(f"names its data as a {type(spec).__name__}, not a data spec", path=path,
                         fix="pass {data}")
    raise InputError(f"names its data as {quoted(spec, NAME_LIMIT)}, which is not shipped sample data, a torchvision "
                     f"dataset or an existing data file; nc-probe would have to import or call it, and {CONSENT}",
                     path=path,
                     fix=CONFIRM_DATA)


def _ints(value, count: int, top: int) -> bool:
    return isinstance(value, (list, tuple)) and 0 < len(value) <= count and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= top for v in value)


def _number(value, bound: float) -> bool:
    """A finite int or float within ``[-bound, bound]`` (NaN fails the comparison; a huge int compares exactly)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -bound <= value <= bound


def _numbers(value, count: int) -> bool:
    return isinstance(value, (list, tuple)) and 0 < len(value) <= count and all(_number(v, 1e6) for v in value)


def _class_names(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) <= 1 << 20 and all(
        isinstance(c, str) or (isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 62) for c in value)


#: Metadata values nc-probe uses, with the type each must have; a value of another type is dropped (a 10^12-element
#: input_shape or a dict of class names from a file must not reach the code that uses them).
METADATA_CHECKS = {
    "arch": lambda v: isinstance(v, str),
    "arch_kwargs": lambda v: isinstance(v, dict),
    "data": lambda v: isinstance(v, str),
    "split": lambda v: isinstance(v, str),
    "class_names": _class_names,
    "image_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 8192,
    "mean": lambda v: _numbers(v, 4),
    "std": lambda v: _numbers(v, 4),
    "input_shape": lambda v: _ints(v, 4, 8192) and math.prod(v) <= 1 << 26,
    "epoch": lambda v: _number(v, 1e12),  # a trajectory's x axis: 10**400 has no float
}


def clean_metadata(meta) -> tuple[dict, list[str]]:
    """A checkpoint's ``nc_probe`` metadata with the values nc-probe uses type-checked: ``(kept, dropped keys)``."""
    if not isinstance(meta, dict):
        return {}, []
    kept, dropped = {}, []
    for key, value in meta.items():
        check = METADATA_CHECKS.get(key)
        if check is None or check(value):
            kept[str(key)] = value
        else:
            dropped.append(str(key))
    return kept, dropped
