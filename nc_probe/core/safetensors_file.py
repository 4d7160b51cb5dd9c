"""The safetensors layout, read without trusting it: a little-endian u64 header length, a JSON header, raw data.

Every declared size is checked against the file before anything is allocated: the header is a JSON object of
tensor entries (and an optional ``__metadata__`` map of strings); each tensor has a dtype nc-probe reads, a shape of
non-negative integers, and ``data_offsets`` ``[begin, end]`` with ``0 <= begin <= end`` inside the file, whose span
is exactly the shape times the dtype's size; no two tensors overlap. A file that breaks any of this is refused with
one line naming the tensor, so a 1 KB file cannot make nc-probe allocate what its header claims.

Rows are read with plain file reads (no memory map), so memory stays flat however large the file is.
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from nc_probe.core.errors import InputError
from nc_probe.core.text import format_bytes, quoted

#: safetensors dtype names nc-probe reads, as numpy dtypes; BF16 is widened to float32 on reading.
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
          "U8": "u1", "BOOL": "?"}
BF16 = "BF16"
MAX_HEADER = 100 * 1024**2
REWRITE = "write it again with {save_features} or nc_probe.write_store"


def json_kind(value) -> str:
    """What a JSON value is, for messages: "an object", "a list", "a string", "a number", ..."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


class SafetensorsFile:
    """A checked safetensors header; :meth:`read_rows` reads rows of a tensor.

    ``tensors`` maps each name to ``(dtype, shape, begin, end)`` (dtype a numpy dtype, or ``"BF16"``), ``metadata``
    is the ``__metadata__`` map of strings, ``alias`` maps nc-probe's names to the file's (set by the caller).
    """

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        header, self.data_start = _read_header(path, size)
        self.metadata: dict[str, str] = _metadata(header.pop("__metadata__", None), path)
        self.alias: dict[str, str] = {}
        self.tensors = {name: _entry(name, info, path, size - self.data_start) for name, info in header.items()}
        _check_overlaps(self.tensors, path)

    def shape(self, name: str) -> tuple:
        return self.tensors[name][1]

    def dtype(self, name: str):
        """The stored dtype: a numpy dtype, or ``"BF16"`` (read as float32)."""
        return self.tensors[name][0]

    def row_nbytes(self, name: str) -> int | None:
        """Bytes per row of ``name`` as stored (None for BF16, which is converted on reading)."""
        dtype, shape, _, _ = self.tensors[self.alias.get(name, name)]
        return None if isinstance(dtype, str) else math.prod(shape[1:]) * dtype.itemsize

    def read_rows(self, name: str, start: int, stop: int, out: bytearray | None = None) -> np.ndarray:
        dtype, shape, begin, _ = self.tensors[self.alias.get(name, name)]
        row_items = math.prod(shape[1:])
        itemsize = 2 if isinstance(dtype, str) else dtype.itemsize  # the one str dtype: "BF16"
        count = (stop - start) * row_items
        buf: memoryview | bytearray
        if out is not None and dtype != BF16 and len(out) >= count * itemsize:
            buf = memoryview(out)[: count * itemsize]
        else:
            buf = bytearray(count * itemsize)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin + start * row_items * itemsize)
            got = f.readinto(buf)
        if got != len(buf):
            raise InputError(f"the file is truncated inside tensor {quoted(name)}", path=self.path, fix=REWRITE)
        if dtype == BF16:
            raw = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            return raw.view(np.float32).reshape((stop - start,) + shape[1:])
        return np.frombuffer(buf, dtype=dtype).reshape((stop - start,) + shape[1:])


def _read_header(path: str, size: int) -> tuple[dict, int]:
    """The header as a dict, and where the data starts."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError("file is empty or truncated (no safetensors header)", path=path, fix=REWRITE)
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > MAX_HEADER:
            raise InputError("safetensors header is larger than the file: the file is truncated or not "
                             "safetensors", path=path, fix=REWRITE)
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InputError("safetensors header is not valid JSON: the file is corrupt", path=path, fix=REWRITE) \
            from None
    if not isinstance(header, dict):
        raise InputError(f"safetensors header is {json_kind(header)}, not an object of tensors: the file is corrupt "
                         "or not safetensors", path=path, fix=REWRITE)
    return header, 8 + n


def _metadata(meta, path: str) -> dict[str, str]:
    """``__metadata__``: absent, or a map of strings (the safetensors format allows nothing else)."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InputError(f"the safetensors __metadata__ is {json_kind(meta)}, not an object of strings", path=path,
                         fix=REWRITE)
    for key, value in meta.items():
        if not isinstance(value, str):
            raise InputError(f"metadata entry {quoted(key)} is {json_kind(value)}, not a string (safetensors "
                             "metadata maps names to strings)", path=path,
                             fix="store nested values as JSON text, or " + REWRITE)
    return meta


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _entry(name: str, info, path: str, data_size: int) -> tuple:
    """``(dtype, shape, begin, end)`` of one tensor, every field checked against the file."""
    tensor = f"tensor {quoted(name)}"
    if not isinstance(info, dict):
        raise InputError(f"{tensor} is described by {json_kind(info)}, not an object", path=path, fix=REWRITE)
    code = info.get("dtype")
    if code != BF16 and (not isinstance(code, str) or code not in DTYPES):
        raise InputError(f"{tensor} has dtype {quoted(code)}, which nc-probe does not read", path=path,
                         fix="store features as F32, F64, F16 or BF16 and labels as integers")
    dtype = BF16 if code == BF16 else np.dtype(DTYPES[code])
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        raise InputError(f"{tensor} has shape {quoted(json.dumps(shape))}, not a list of non-negative integers",
                         path=path, fix=REWRITE)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise InputError(f"{tensor} has data_offsets {quoted(json.dumps(offsets))}, not two ordered non-negative "
                         "integers", path=path, fix=REWRITE)
    begin, end = offsets
    if end > data_size:
        raise InputError(f"the file is truncated: {tensor} ends past its end", path=path, fix=REWRITE)
    itemsize = 2 if isinstance(dtype, str) else dtype.itemsize  # the one str dtype: BF16
    nbytes = math.prod(shape) * itemsize
    if nbytes != end - begin:
        raise InputError(f"{tensor} declares shape {_dims(shape)} of {code} ({_size(nbytes)}) but its "
                         f"data_offsets span {format_bytes(end - begin)}: the file is corrupt", path=path,
                         fix=REWRITE)
    return dtype, tuple(shape), begin, end


def _size(nbytes: int) -> str:
    return format_bytes(nbytes) if nbytes < 2**70 else "more than a zettabyte"


def _dims(shape) -> str:
    text = str(tuple(shape))
    return text if len(text) <= 60 else text[:56] + "...)"


def _check_overlaps(tensors: dict, path: str) -> None:
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in tensors.items() if end > begin)
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise InputError(f"tensors {quoted(a)} and {quoted(b)} overlap in the file: it is corrupt", path=path,
                             fix=REWRITE)
