"""Typed settings: four frozen dataclasses that own their defaults and their validation.

- :class:`MetricSettings`: how the metrics are computed (eps^2, rank tolerance, subspace classes, the memory
  budget of the per-class statistics, ...);
- :class:`DataSettings`: what the model runs on (a data spec, split, limit, classes, image size, normalisation);
- :class:`ModelSettings`: how a checkpoint becomes a model (architecture, prefix, trust);
- :class:`ExtractionSettings`: how inference runs (tapped layer, device, batch size, workers, autocast, and the
  memory the extracted features may take before they spill to a temporary file).

:class:`Settings` bundles the four. Every public function takes its settings object and also keyword shortcuts
named after the fields (``analyze_file(path, eps2=1.0)``); :meth:`Settings.with_` routes each shortcut to its group
and rejects unknown names. Validation errors name the setting as a placeholder (see :mod:`nc_probe.core.errors`), so a
notebook user reads ``eps2`` and a command-line user ``--eps2``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nc_probe.core.errors import InputError

GiB = 1024**3
AMP_MODES = ("off", "bf16", "fp16")
BACKENDS = ("auto", "torch")
PRECISIONS = ("float64", "float32")
POOLS = ("auto", "gap", "cls", "mean")
MATRIX_MODES = ("auto", "always", "never")

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20, "g": 1e9,
          "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_bytes(value, param: str = "memory_budget") -> int:
    """``2GiB``, ``"512MiB"``, ``"1.5G"``, ``1000000`` -> bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"{{{param}}} {value!r} is not a size", fix="write e.g. 2GiB, 512MiB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


#: At most this many class ids in one ``classes``/``data_classes`` setting: a range such as 0-100000000 is refused
#: before it is spelled out (it would take gigabytes), not cut to the classes that exist.
MAX_CLASS_IDS = 1 << 20


def class_id_span(text: str, value, param: str) -> range | None:
    """``"7"`` or ``"5-9"`` (a part of the setting ``value``) as a range of class ids; None when ``text`` is neither.
    A range that runs backwards or spans more than :data:`MAX_CLASS_IDS` ids is an InputError."""
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if not m:
        return None
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if hi < lo:
        raise InputError(f"{{{param}}} {value!r}: range {text} runs backwards", fix=f"write {hi}-{lo}")
    if hi - lo + 1 > MAX_CLASS_IDS:
        raise InputError(f"{{{param}}} {value!r}: range {text} spans {hi - lo + 1:,} class ids, more than the "
                         f"{MAX_CLASS_IDS:,} one setting may name", fix="name only classes that exist, e.g. 0-999")
    return range(lo, hi + 1)


def parse_ids(value, param: str) -> tuple[int, ...] | None:
    """``"0,3,5-9"``, ``[0, 3]`` or None -> sorted unique ids (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        spans = []
        for part in value.split(","):
            span = class_id_span(part.strip(), value, param)
            if span is None:
                raise InputError(f"{{{param}}} {value!r}: {part.strip()!r} is not a class index or range",
                                 fix="write e.g. 0,3,5-9")
            spans.append(span)
        if sum(len(r) for r in spans) > MAX_CLASS_IDS:
            raise InputError(f"{{{param}}} {value!r} names more than {MAX_CLASS_IDS:,} class ids",
                             fix="name only classes that exist, e.g. 0-999")
        return tuple(sorted({i for r in spans for i in r}))
    if isinstance(value, (range, list, tuple)) and len(value) > MAX_CLASS_IDS:
        raise InputError(f"{{{param}}} names {len(value):,} class ids, more than {MAX_CLASS_IDS:,}",
                         fix="name only classes that exist")
    try:
        ids = sorted({int(v) for v in value})
    except (TypeError, ValueError):
        raise InputError(f"{{{param}}} must be class indices, got {value!r}", fix="pass e.g. [0, 3, 5]") from None
    if ids and ids[0] < 0:
        raise InputError(f"{{{param}}} has a negative class index {ids[0]}", fix="pass indices 0..C-1")
    return tuple(ids)


def _numbers(value, param: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{{{param}}} {value!r} is not a list of numbers",
                         fix=f"pass e.g. {{{param}=0.5,0.5,0.5}}") from None


def _check(ok: bool, message: str, fix: str) -> None:
    if not ok:
        raise InputError(message, fix=fix)


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass's own field in __post_init__


@dataclass(frozen=True)
class MetricSettings:
    """How the metrics are computed.

    eps2: MCR^2 distortion eps^2 of the coding rates. rank_tol: relative eigenvalue cut-off of ``rank_numerical``.
    subspace_dim: fix the principal-angle basis size k of every class (default: its ``rank_energy95``).
    classes: class ids whose subspace metrics are computed (default: every class).
    memory_budget: bytes the per-class subspace statistics and bases may take; beyond it classes are processed in
    groups, one more pass over the features each. chunk_rows: rows per read (results do not depend on it beyond float
    rounding). backend: "auto" (numpy kernels on the CPU, torch on GPUs) or "torch" (the torch code path
    everywhere, as a GPU runs it). min_class_count: classes with fewer samples are left out of every metric.
    angle_classes: principal angles for the K most frequent classes (None: all, up to 1000; 0: none).
    angle_precision: "float64" (exact) or "float32" products for the angles (faster; affinities to ~1e-5).
    matrices: keep the C x C matrices ("auto": up to 2048 classes; "always"; "never": summaries only).
    linear_probe: also compute ``acc_linear_probe`` (a closed-form ridge probe, scored in the second pass) and
    ``rank_numerical_total`` (on by default in layer analyses; at a 32k-way head the probe's scores cost as much as
    the classifier's).
    nearest_subspace: also compute ``acc_nearest_subspace`` (the MCR^2 nearest-subspace rule: one more pass scoring
    every row against up to 30 basis vectors per class, about 6x one float64 X^T X at C=100, d=512; off by default).
    mahalanobis: also compute ``acc_ncc_mahalanobis`` (the nearest class mean under the shared within-class
    covariance: one more C-row rule scored in the second pass, about 0.2x one float64 X^T X at N=1M, d=512, C=100;
    off by default).
    """

    eps2: float = 0.5
    rank_tol: float = 1e-6
    subspace_dim: int | None = None
    classes: tuple[int, ...] | None = None
    memory_budget: int = 2 * GiB
    chunk_rows: int | None = None
    backend: str = "auto"
    min_class_count: int = 1
    angle_classes: int | None = None
    angle_precision: str = "float64"
    matrices: str = "auto"
    linear_probe: bool = False
    nearest_subspace: bool = False
    mahalanobis: bool = False

    def __post_init__(self):
        _set(self, "classes", parse_ids(self.classes, "classes"))
        _set(self, "memory_budget", parse_bytes(self.memory_budget, "memory_budget"))
        _check(isinstance(self.eps2, (int, float)) and self.eps2 > 0, f"{{eps2}} must be positive, got {self.eps2}",
               "use e.g. {eps2=0.5}")
        _check(isinstance(self.rank_tol, (int, float)) and 0 < self.rank_tol < 1,
               f"{{rank_tol}} must lie in (0, 1), got {self.rank_tol}", "use e.g. {rank_tol=1e-6}")
        _check(self.subspace_dim is None or (isinstance(self.subspace_dim, int) and self.subspace_dim >= 1),
               f"{{subspace_dim}} must be a positive integer, got {self.subspace_dim!r}",
               "leave it out to use each class's rank_energy95")
        _check(self.memory_budget > 0, f"{{memory_budget}} must be positive, got {self.memory_budget}",
               "use e.g. {memory_budget=2GiB}")
        _check(self.chunk_rows is None or (isinstance(self.chunk_rows, int) and self.chunk_rows >= 1),
               f"{{chunk_rows}} must be a positive integer, got {self.chunk_rows!r}", "leave it out")
        _check(self.backend in BACKENDS, f"{{backend}} {self.backend!r} is not one of {', '.join(BACKENDS)}",
               "use {backend=auto}")
        _check(isinstance(self.min_class_count, int) and self.min_class_count >= 1,
               f"{{min_class_count}} must be a positive integer, got {self.min_class_count!r}", "use e.g. 2")
        _check(self.angle_classes is None or (isinstance(self.angle_classes, int) and self.angle_classes >= 0),
               f"{{angle_classes}} must be a count of classes, got {self.angle_classes!r}", "use e.g. 1000, or 0")
        _check(self.angle_precision in PRECISIONS,
               f"{{angle_precision}} {self.angle_precision!r} is not one of {', '.join(PRECISIONS)}",
               "use {angle_precision=float64}")
        _check(self.matrices in MATRIX_MODES, f"{{matrices}} {self.matrices!r} is not one of "
               f"{', '.join(MATRIX_MODES)}", "use {matrices=auto}")
        _check(isinstance(self.linear_probe, bool), f"{{linear_probe}} must be true or false, got "
               f"{self.linear_probe!r}", "use {linear_probe=true}")
        _check(isinstance(self.nearest_subspace, bool), f"{{nearest_subspace}} must be true or false, got "
               f"{self.nearest_subspace!r}", "use {nearest_subspace=true}")
        _check(isinstance(self.mahalanobis, bool), f"{{mahalanobis}} must be true or false, got "
               f"{self.mahalanobis!r}", "use {mahalanobis=true}")


@dataclass(frozen=True)
class DataSettings:
    """What a model runs on: ``data`` (a spec string, a Dataset, a DataLoader or an (x, y) pair; default: the
    checkpoint's metadata), ``split``, ``limit`` (N samples, evenly spread over classes), ``data_classes`` (keep
    only these classes: ids or names), ``image_size``, ``mean``, ``std`` (normalisation), ``class_map`` (image
    folders: folder name -> the classifier's class index), ``seq_len`` (text tokenized for a language model: tokens
    per window, default 256)."""

    data: Any = None
    split: str | None = None
    limit: int | None = None
    data_classes: Any = None
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_map: Any = None
    seq_len: int | None = None

    def __post_init__(self):
        _set(self, "mean", _numbers(self.mean, "mean"))
        _check(self.seq_len is None or (isinstance(self.seq_len, int) and not isinstance(self.seq_len, bool)
                                        and 2 <= self.seq_len <= 1 << 20),
               f"{{seq_len}} must be an integer from 2 to 2^20, got {self.seq_len!r}", "pass e.g. {seq_len=256}")
        _set(self, "std", _numbers(self.std, "std"))
        _check(self.limit is None or (isinstance(self.limit, int) and self.limit >= 1),
               f"{{limit}} must be at least 1, got {self.limit}", "pass a positive number of samples")
        _check(self.image_size is None or (isinstance(self.image_size, int) and self.image_size >= 1),
               f"{{image_size}} must be a positive integer, got {self.image_size!r}", "pass e.g. {image_size=224}")
        _check(self.std is None or all(s != 0 for s in self.std), "{std} contains a zero",
               "give positive standard deviations")


@dataclass(frozen=True)
class ModelSettings:
    """How a checkpoint becomes a model: ``arch`` (torchvision:NAME, timm:NAME or package.module:factory; default:
    the checkpoint's metadata), ``arch_kwargs``, ``strip_prefix`` (a wrapper's key prefix), ``trust_checkpoint``
    (allow unpickling arbitrary code and code named by the file)."""

    arch: str | None = None
    arch_kwargs: Mapping | None = None
    strip_prefix: str | None = None
    trust_checkpoint: bool = False

    def __post_init__(self):
        if isinstance(self.arch_kwargs, str):
            import json

            try:
                _set(self, "arch_kwargs", json.loads(self.arch_kwargs))
            except json.JSONDecodeError as e:
                raise InputError(f"{{arch_kwargs}} is not JSON ({e.msg})",
                                 fix="""write e.g. '{"num_classes": 10}'""") from None
        _check(self.arch_kwargs is None or isinstance(self.arch_kwargs, Mapping),
               "{arch_kwargs} must be a JSON object of keyword arguments", """write e.g. '{"num_classes": 10}'""")


@dataclass(frozen=True)
class ExtractionSettings:
    """How inference runs: ``layer`` (the module whose output is tapped; default: the input of the final
    nn.Linear), ``device`` (auto, cpu, cuda[:N], mps), ``batch_size``, ``workers`` (DataLoader processes), ``amp``
    (off, bf16, fp16), ``spill_threshold`` (bytes of extracted features kept in memory; beyond it they go to a
    temporary file for the analysis). Layer analyses: ``layers`` (which modules: names, globs, re:REGEX, indices,
    @blocks, @penultimate; default "@blocks,@penultimate"), ``pool`` (auto, gap, cls, mean: how conv maps and token
    outputs become one vector per sample), ``max_dim`` (wider layers are randomly projected to this many
    dimensions)."""

    layer: str | None = None
    device: str = "auto"
    batch_size: int = 256
    workers: int = 0
    amp: str = "off"
    spill_threshold: int = 2 * GiB
    layers: str | None = None
    pool: str = "auto"
    max_dim: int = 2048

    def __post_init__(self):
        _set(self, "spill_threshold", parse_bytes(self.spill_threshold, "spill_threshold"))
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1,
               f"{{batch_size}} must be at least 1, got {self.batch_size}", "pass e.g. {batch_size=256}")
        _check(isinstance(self.workers, int) and self.workers >= 0, f"{{workers}} must be >= 0, got {self.workers}",
               "pass {workers=0} to load in the main process")
        _check(self.amp in AMP_MODES, f"{{amp}} {self.amp!r} is not one of {', '.join(AMP_MODES)}",
               "pass {amp=bf16}, {amp=fp16} or {amp=off}")
        _check(self.spill_threshold > 0, f"{{spill_threshold}} must be positive, got {self.spill_threshold}",
               "use e.g. {spill_threshold=2GiB}")
        _check(self.pool in POOLS, f"{{pool}} {self.pool!r} is not one of {', '.join(POOLS)}", "use {pool=auto}")
        _check(isinstance(self.max_dim, int) and self.max_dim >= 1,
               f"{{max_dim}} must be a positive integer, got {self.max_dim!r}", "use e.g. {max_dim=2048}")


GROUPS = {"model": ModelSettings, "data": DataSettings, "extraction": ExtractionSettings, "metrics": MetricSettings}


@dataclass(frozen=True)
class Settings:
    """The four groups together, for functions that run a checkpoint."""

    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    extraction: ExtractionSettings = field(default_factory=ExtractionSettings)
    metrics: MetricSettings = field(default_factory=MetricSettings)

    def with_(self, **shortcuts) -> Settings:
        """A copy with fields replaced by name, whatever their group: ``with_(eps2=1.0, data="sample:digits")``."""
        changes: dict[str, dict] = {}
        for key, value in shortcuts.items():
            changes.setdefault(group_of(key), {})[key] = value
        return dataclasses.replace(self, **{g: dataclasses.replace(getattr(self, g), **kw)
                                            for g, kw in changes.items()})

    @classmethod
    def from_dict(cls, record: Mapping, notes: list | None = None) -> Settings:
        """The typed settings of a settings record: a report's, a layer report's, a baseline's or a trajectory's
        ``settings`` (flat: ``{"eps2": 0.5, "subspace_classes": [0, 3], "device": "cpu", ...}``), each value
        validated as the settings validate it (InputError naming the setting).

        Names are the fields' own (``subspace_classes`` is the record's name of ``classes``); a key absent or null
        takes the default, as a record made before the setting existed was made with it. What an analysis did with
        its settings (:data:`RECORD_ONLY`) is not a setting and is skipped; any other key (a newer nc-probe's, a
        hand-made record's) is left out, and ``notes`` (a list, when given) gets a line naming it.
        """
        changes: dict[str, dict] = {}
        for key, value in record.items():
            name = RECORD_NAMES.get(key, key)
            group = FIELD_GROUP.get(name)
            if group is None:
                if key not in RECORD_ONLY and notes is not None:
                    notes.append(f"settings.{key} is not a setting this nc-probe knows; it was left out")
                continue
            if value is not None:
                changes.setdefault(group, {})[name] = value
        return cls(**{g: GROUPS[g](**kw) for g, kw in changes.items()})


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


FIELD_GROUP = {name: group for group, cls in GROUPS.items() for name in _field_names(cls)}
#: A settings record's name for a field whose own name would be ambiguous there (the subspace classes, beside the
#: data's classes).
RECORD_NAMES = {"subspace_classes": "classes"}
#: Keys of a settings record that are what a run did, not what it was asked: the classes the work plan kept
#: (``frequent_classes``) and a trajectory's splits.
RECORD_ONLY = frozenset({"frequent_classes", "splits"})


def group_of(key: str, allowed=tuple(GROUPS)) -> str:
    """The settings group a shortcut belongs to; TypeError (a programming error) for an unknown name."""
    group = FIELD_GROUP.get(key)
    if group is None or group not in allowed:
        names = [n for n, g in FIELD_GROUP.items() if g in allowed]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(f"unknown setting {key!r}{hint}; settings are: {', '.join(names)}")
    return group


def metric_settings(settings: MetricSettings | None = None, **shortcuts) -> MetricSettings:
    """``settings`` (default: the defaults) with ``shortcuts`` replaced; only MetricSettings fields."""
    for key in shortcuts:
        group_of(key, ("metrics",))
    return dataclasses.replace(settings or MetricSettings(), **shortcuts)


def checkpoint_settings(settings: Settings | None = None, **shortcuts) -> Settings:
    """``settings`` (default: the defaults) with ``shortcuts`` routed to their groups."""
    return (settings or Settings()).with_(**shortcuts)
