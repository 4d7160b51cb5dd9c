"""FeatureStore: features, labels, optional logits, classifier W/b, class names and metadata.

On disk it is a safetensors file (tensors ``features`` (N, d), ``labels`` (N,), optional ``logits`` (N, C),
``W`` (C, d), ``b`` (C,); class names and metadata as JSON in the header), so any safetensors reader opens it and
nothing is ever unpickled. nc-probe writes it streaming and reads it in row chunks with plain file reads (no
memory map), so memory stays flat however large N is.

``open_store`` also reads plain ``.npz`` and ``.pt`` files (``torch.load(weights_only=True)``) whose arrays are named
``H``/``features``, ``y``/``labels``, and optionally ``logits``, ``W``, ``b``, ``class_names``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nc_probe.core.errors import InputError
from nc_probe.core.feature_checks import ALIASES as ALIASES  # re-exported: callers ask the store module
from nc_probe.core.feature_checks import (
    MAX_LABEL,
    WANTED,
    canonical_names,
    check_dtypes,
    dtype_name,
    json_metadata,
    json_names,
)
from nc_probe.core.feature_checks import holds_features as holds_features
from nc_probe.core.files import file_sha256
from nc_probe.core.safetensors_file import DTYPES, SafetensorsFile
from nc_probe.data.array_files import read_array_file, string_list

FORMAT = "nc-probe-features"
FORMAT_VERSION = "1"
ROW_ARRAYS = ("features", "labels", "logits", "predictions")
_ST_NAMES = {np.dtype(v).str: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class RowShare:
    """A torchrun rank's rows among all ranks': local row i is row ``first + i * step`` of ``total``. What makes
    the parts of a report that follow particular rows (the PCA sample) the same as in one process."""

    first: int
    step: int
    total: int

    def local(self, rows: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Of the global ``rows``, those among this share's ``count`` rows: ``(global rows, local indices)``."""
        off = rows - self.first
        mine = (off >= 0) & (off % self.step == 0) & (off // self.step < count)
        return rows[mine], off[mine] // self.step


@dataclass
class Chunk:
    features: np.ndarray
    labels: np.ndarray
    logits: np.ndarray | None
    start: int


@dataclass
class FeatureStore:
    """Labelled features readable in row chunks. Build with :func:`open_store` or :meth:`from_arrays`."""

    source: str
    num_samples: int
    dim: int
    W: np.ndarray | None = None
    b: np.ndarray | None = None
    class_names: list[str] | None = None
    metadata: dict = field(default_factory=dict)
    has_logits: bool = False
    has_predictions: bool = False  # the model's own predicted class per row (argmax of its output)
    _arrays: dict | None = field(default=None, repr=False)
    _file: SafetensorsFile | None = field(default=None, repr=False)
    _row0: int = field(default=0, repr=False)
    #: Under torchrun, where this rank's rows sit among all ranks' rows (None: the store is all of the data).
    share: RowShare | None = None
    _buffers: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # read_buffer's

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, features, labels, *, logits=None, predictions=None, W=None, b=None, class_names=None,
                    metadata=None,
                    source="<arrays>") -> FeatureStore:
        arrays = {"features": _to_numpy(features), "labels": _to_numpy(labels)}
        if logits is not None:
            arrays["logits"] = _to_numpy(logits)
        if predictions is not None:
            arrays["predictions"] = _to_numpy(predictions)
        W, b = (None if v is None else _to_numpy(v) for v in (W, b))
        check_dtypes({k: v.dtype for k, v in (*arrays.items(), ("W", W), ("b", b)) if v is not None}, source)
        if predictions is not None:
            arrays["predictions"] = arrays["predictions"].astype(np.int64)
        store = cls(source=source, num_samples=0, dim=0, _arrays=arrays, W=W, b=b,
                    class_names=None if class_names is None else [str(c) for c in class_names],
                    metadata=dict(metadata or {}), has_logits=logits is not None,
                    has_predictions=predictions is not None)
        store._validate_shapes({k: v.shape for k, v in arrays.items()})
        return store

    def _validate_shapes(self, shapes: dict) -> None:
        src = self.source
        feats, labels = shapes["features"], shapes["labels"]
        if len(feats) != 2:
            raise InputError(f"features have shape {tuple(feats)}, expected (N, d)", path=src,
                             fix="flatten each sample's features into one row")
        if len(labels) != 1 or labels[0] != feats[0]:
            raise InputError(f"{feats[0]} feature rows but labels of shape {tuple(labels)}", path=src,
                             fix="store exactly one integer label per feature row")
        if feats[0] == 0:
            raise InputError("no samples", path=src, fix="store at least one feature row per class")
        if feats[1] == 0:
            raise InputError(f"features have shape {tuple(feats)}: no feature dimensions", path=src,
                             fix="store at least one feature per row")
        self.num_samples, self.dim = int(feats[0]), int(feats[1])
        if "logits" in shapes and (len(shapes["logits"]) != 2 or shapes["logits"][0] != feats[0]):
            raise InputError(f"logits of shape {tuple(shapes['logits'])} do not match {feats[0]} samples", path=src,
                             fix="store logits as (N, C) or leave them out")
        if "predictions" in shapes and tuple(shapes["predictions"]) != (feats[0],):
            raise InputError(f"predictions of shape {tuple(shapes['predictions'])} do not match {feats[0]} samples",
                             path=src, fix="store one predicted class per row, or leave them out")
        if self.W is not None:
            if self.W.ndim != 2 or self.W.shape[1] != self.dim:
                raise InputError(f"W has shape {self.W.shape} but the features have d={self.dim}", path=src,
                                 fix="store the final linear layer's weight as (C, d)")
            if self.b is not None and self.b.shape != (self.W.shape[0],):
                raise InputError(f"b has shape {self.b.shape} but W has {self.W.shape[0]} rows", path=src,
                                 fix="store the bias as (C,) or leave it out")
        elif self.b is not None:
            raise InputError("b is given without W", path=src, fix="store W too, or leave b out")
        self._validate_classifier()

    def _validate_classifier(self) -> None:
        """W and b finite (a diverged model's NaN rows would silently make every prediction wrong), and no more
        class names than W has rows."""
        for name, a in (("W", self.W), ("b", self.b)):
            if a is not None and not np.all(np.isfinite(a)):
                bad = int(np.count_nonzero(~np.isfinite(a)))
                raise InputError(f"the classifier {name} holds NaN or Inf ({bad} of {a.size} entries)",
                                 path=self.source, fix="store the weights of a model whose training did not "
                                                       "diverge, or leave W and b out")
        if self.W is not None and self.class_names is not None and len(self.class_names) > len(self.W):
            raise InputError(f"{len(self.class_names)} class names but the classifier W has {len(self.W)} rows",
                             path=self.source, fix="give one name per row of W")

    # ------------------------------------------------------------------ reading
    def read(self, name: str, start: int = 0, stop: int | None = None, out: bytearray | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` of array ``name``. With ``out`` (from :meth:`read_buffer`), a file is read into that
        buffer and the result is a view of it, valid until the buffer is used again: no fresh allocation (and page
        faults) per read. In-memory stores return a view of their array either way."""
        stop = self.num_samples if stop is None else stop
        start, stop = start + self._row0, stop + self._row0
        if self._arrays is not None:
            rows = self._arrays[name][start:stop]
        else:
            assert self._file is not None  # a store holds either arrays or a file
            rows = self._file.read_rows(name, start, stop, out)
        if name == "logits" and not _all_finite(rows):  # their argmax would be the model's prediction
            bad = start + int(np.argwhere(~np.isfinite(rows))[0][0])
            raise InputError(f"logits contain NaN or Inf (first at row {bad})", path=self.source,
                             fix="store the logits of a model whose outputs are finite, or leave them out")
        return rows

    def read_buffer(self, name: str, rows: int) -> bytearray | None:
        """A buffer for :meth:`read` ``(..., out=)`` of up to ``rows`` rows of ``name`` (None: nothing to reuse).
        One per array, kept and handed to every pass that asks (one pass at a time reads with it): fresh memory is
        paid for in page faults on first touch, 0.65 s for pass 1's 128 MiB on the 2-core Xeon VM."""
        if self._file is None:
            return None
        nbytes = self._file.row_nbytes(name)
        if nbytes is None:
            return None
        size = min(rows, self.num_samples) * nbytes
        buf = self._buffers.get(name)
        if buf is None or len(buf) < size:
            buf = self._buffers[name] = bytearray(size)
        return buf

    @property
    def is_shard(self) -> bool:
        return self.share is not None

    def shard(self, start: int, stop: int) -> FeatureStore:
        """The rows ``[start, stop)`` as a store of their own (a torchrun rank's contiguous share of a file); W, b,
        names are shared."""
        part = dataclasses.replace(self)
        part._row0, part.num_samples = self._row0 + start, stop - start
        part.share = RowShare(start, 1, self.num_samples)
        return part

    def as_share(self, first: int, step: int, total: int) -> FeatureStore:
        """This store as a torchrun rank's share of ``total`` rows whose local row i is row ``first + i * step`` of
        the whole (the features a rank extracted from every ``step``-th sample)."""
        return dataclasses.replace(self, share=RowShare(first, step, total))

    def labels(self) -> np.ndarray:
        """All labels as int64, checked to be non-negative integers."""
        raw = self.read("labels")
        if raw.dtype.kind == "f":
            if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
                raise InputError("labels are not whole numbers", path=self.source,
                                 fix="store class indices 0..C-1 as integers")
        elif raw.dtype.kind not in "iub":
            raise InputError(f"labels have dtype {dtype_name(raw.dtype)}", path=self.source,
                             fix="store class indices 0..C-1 as integers")
        if raw.dtype.kind in "fu" and raw.size and raw.max() >= MAX_LABEL:
            raise InputError(f"label {raw.max():.3g} is too large to be a class index", path=self.source,
                             fix="store class indices 0..C-1")
        y = raw.astype(np.int64)
        if y.size and y.min() < 0:
            raise InputError(f"negative label {int(y.min())}", path=self.source,
                             fix="store class indices 0..C-1")
        return y

    def iter_chunks(self, rows: int, reuse: bool = False, check_finite: bool = True) -> Iterator[Chunk]:
        """Chunks of ``rows`` rows. ``reuse``: successive chunks' features share one buffer, so a chunk is valid only
        until the next one is requested (faster: no fresh allocation per chunk). ``check_finite=False``: the caller
        checks the features itself (:meth:`check_finite`), e.g. from statistics a NaN or Inf would poison anyway."""
        buf = self.read_buffer("features", rows) if reuse else None
        for start in range(0, self.num_samples, rows):
            stop = min(start + rows, self.num_samples)
            feats = self.read("features", start, stop, out=buf)
            if check_finite:
                self.check_finite(feats, start)
            yield Chunk(feats, self.labels_chunk(start, stop), self.read("logits", start, stop)
                        if self.has_logits else None, start)
            del feats  # a consumer that drops its chunk keeps one chunk in memory, not two

    def check_finite(self, feats: np.ndarray, start: int) -> None:
        """Raise an InputError naming the first row of ``feats`` (rows from ``start``) with a NaN or Inf."""
        if not _all_finite(feats):
            bad = self._row0 + start + int(np.argwhere(~np.isfinite(feats))[0][0])
            raise InputError(f"features contain NaN or Inf (first at row {bad})", path=self.source,
                             fix="check the model for overflow (try {amp=off}) or drop those samples")

    def labels_chunk(self, start: int, stop: int) -> np.ndarray:
        return self.read("labels", start, stop).astype(np.int64)

    def sha256(self) -> str | None:
        """sha256 of the file (None for in-memory arrays)."""
        if self._arrays is not None and self._file is None and not os.path.isfile(self.source):
            return None
        return file_sha256(self.source)


def _all_finite(a: np.ndarray) -> bool:
    """``np.all(np.isfinite(a))``, fast: a NaN or Inf makes the BLAS dot product of ``a`` with itself non-finite
    (products of finite numbers are >= 0, so nothing cancels); only when it is (or it overflowed) is ``a`` scanned."""
    if a.dtype in (np.float32, np.float64) and a.flags.c_contiguous and a.size:
        import torch  # here: the module is read without torch (start-up)

        flat = torch.from_numpy(a.reshape(-1))  # torch's dot: every core (numpy's took twice as long per chunk)
        if bool(torch.isfinite(torch.dot(flat, flat))):
            return True
    return bool(np.all(np.isfinite(a)))


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    a = np.asarray(x)
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))  # torch reads native byte order only


# ---------------------------------------------------------------------- safetensors
def _open_safetensors(path: str) -> FeatureStore:
    st = SafetensorsFile(path)
    names = canonical_names(list(st.tensors), path)
    check_dtypes({k: st.dtype(n) for n, k in names.items()}, path)
    meta = st.metadata
    small = {k: st.read_rows(n, 0, st.shape(n)[0]) if st.shape(n) else st.read_rows(n, 0, 1).reshape(())
             for n, k in names.items() if k in ("W", "b")}
    store = FeatureStore(source=path, num_samples=0, dim=0, W=small.get("W"), b=small.get("b"),
                         class_names=json_names(meta.get("class_names"), path),
                         metadata=json_metadata(meta.get("metadata"), path),
                         has_logits="logits" in names.values(),
                         has_predictions="predictions" in names.values())
    st.alias = {k: n for n, k in names.items()}
    store._file = st
    store._validate_shapes({k: st.shape(n) for n, k in names.items()})
    return store


def _store_from_dict(arrays: dict, path: str) -> FeatureStore:
    names = canonical_names(list(arrays), path)
    data = {k: arrays[n] for n, k in names.items()}
    class_names = string_list(data.pop("class_names", None), "class_names", path)
    for name, value in data.items():
        data[name] = _array(value, name, path)
    check_dtypes({k: v.dtype for k, v in data.items()}, path)
    return FeatureStore.from_arrays(data["features"], data["labels"], logits=data.get("logits"),
                                    predictions=data.get("predictions"),
                                    W=data.get("W"), b=data.get("b"), class_names=class_names, source=path)


def _array(value, name: str, path: str) -> np.ndarray:
    """One array of an npz/pt file as numpy (a tensor, an array, or a nested list of numbers)."""
    try:
        return _to_numpy(value)
    except (TypeError, ValueError, RuntimeError, NotImplementedError):
        raise InputError(f"{name} is a {type(value).__name__} that cannot be read as an array of numbers", path=path,
                         fix=f"store {WANTED[name]} as a plain (dense, CPU) tensor or array") from None


def open_store(path) -> FeatureStore:
    """Open a feature file: nc-probe/safetensors, ``.npz`` or ``.pt`` (weights_only). Errors are InputError."""
    path = str(path)
    if not os.path.exists(path):
        raise InputError("no such file", path=path, fix="check the path")
    if os.path.isdir(path):
        raise InputError("is a folder, not a feature file", path=path, fix="pass a .safetensors, .npz or .pt file")
    if os.path.getsize(path) == 0:
        raise InputError("file is empty", path=path, fix="write the features again")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"PK":
        # The names are checked from the archive's directory, before any array is read.
        return _store_from_dict(read_array_file(path, select=lambda names: list(canonical_names(names, path))),
                                path)
    if path.endswith((".npz", ".pt", ".pth")):
        raise InputError("file is truncated or not a zip archive", path=path, fix="write it again")
    return _open_safetensors(path)


# ---------------------------------------------------------------------- writing
class StoreWriter:
    """Streams rows into a FeatureStore file; the file appears (atomically) only on :meth:`close`.

    >>> w = StoreWriter("feats.safetensors"); w.append(H, y); w.close(W=W, b=b)
    """

    def __init__(self, path, *, class_names=None, metadata=None):
        self.path = Path(path)
        self.class_names = class_names
        self.metadata = dict(metadata or {})
        self.dir = Path(tempfile.mkdtemp(prefix=".ncprobe-", dir=self.path.parent.resolve()))
        self.parts: dict[str, BinaryIO] = {}
        self.info: dict[str, tuple] = {}
        self.rows_written: dict[str, int] = {}

    def append(self, features, labels, logits=None, predictions=None) -> None:
        rows = {"features": features, "labels": labels}
        if logits is not None:
            rows["logits"] = logits
        if predictions is not None:
            rows["predictions"] = predictions
        for name, arr in rows.items():
            a = np.ascontiguousarray(_to_numpy(arr))
            if name in ("labels", "predictions"):
                a = a.astype("<i8")
            elif a.dtype not in (np.float32, np.float64):
                a = a.astype("<f4")
            dt, tail = self.info.get(name, (a.dtype, a.shape[1:]))
            if (a.dtype, a.shape[1:]) != (dt, tail):
                raise ValueError(f"{name}: rows of {a.dtype}{a.shape[1:]} after {dt}{tail}")
            self.info[name] = (dt, tail)
            f = self.parts.get(name)
            if f is None:
                f = self.parts[name] = open(self.dir / name, "wb")
            f.write(a.tobytes())
            self.rows_written[name] = self.rows_written.get(name, 0) + len(a)

    def close(self, *, W=None, b=None) -> Path:
        for f in self.parts.values():
            f.close()
        # float32 W and b stay float32 (a 256k-way head's W is 2 GiB so, 4 GiB in float64); others are float64
        small = {k: np.ascontiguousarray(a, dtype="<f4" if a.dtype == np.float32 else "<f8")
                 for k, a in (("W", _to_numpy(W) if W is not None else None),
                              ("b", _to_numpy(b) if b is not None else None)) if a is not None}
        header: dict[str, object] = {}
        order: list[str] = []
        offset = 0
        for name in [n for n in ROW_ARRAYS if n in self.parts] + list(small):
            if name in small:
                dt, shape, nbytes = small[name].dtype, small[name].shape, small[name].nbytes
            else:
                dt, tail = self.info[name]
                shape = (self.rows_written[name],) + tuple(tail)
                nbytes = os.path.getsize(self.dir / name)
            header[name] = {"dtype": _ST_NAMES[np.dtype(dt).str], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            order.append(name)
            offset += nbytes
        meta: dict[str, str] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                                "metadata": json.dumps(self.metadata)}
        if self.class_names is not None:
            meta["class_names"] = json.dumps([str(c) for c in self.class_names])
        header["__metadata__"] = meta
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        tmp = self.dir / "store.tmp"
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(blob)))
            out.write(blob)
            for name in order:
                if name in small:
                    out.write(small[name].tobytes())
                else:
                    with open(self.dir / name, "rb") as src:
                        while block := src.read(1 << 24):
                            out.write(block)
        os.replace(tmp, self.path)
        self.abort()
        return self.path

    def abort(self) -> None:
        """Drop everything written so far (also called by close once the file is in place)."""
        import shutil

        for f in self.parts.values():
            f.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def write_store(path, features, labels, *, logits=None, predictions=None, W=None, b=None, class_names=None,
                metadata=None) -> Path:
    """Write a FeatureStore file from in-memory arrays (atomically: a temp file, then a rename)."""
    w = StoreWriter(path, class_names=class_names, metadata=metadata)
    try:
        w.append(features, labels, logits, predictions)
        return w.close(W=W, b=b)
    except BaseException:
        w.abort()
        raise
