"""Named arrays from ``.npz`` (never unpickled) and ``.pt`` (``torch.load(weights_only=True)``) files, with one-line
errors; shared by feature files and data files.

An ``.npz`` is read without trusting what it declares: the caller checks the array names from the zip directory
before anything is decompressed (``select``), and each wanted member's ``.npy`` header (dtype, shape) must account
for exactly the member's declared size, and the declared sizes together must stay within
:data:`MAX_EXPANSION` times the archive's size (or :data:`SMALL_ARCHIVE`), before any array is read. A 2 MB archive
cannot make nc-probe allocate gigabytes.
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable

import numpy as np

from nc_probe.core.errors import InputError
from nc_probe.core.text import format_bytes, quoted

#: An archive may declare at most this many times its own size of arrays (compressed float features shrink by
#: ~1.1x, labels by ~10x) ...
MAX_EXPANSION = 100
#: ... or this much, whatever its size.
SMALL_ARCHIVE = 256 * 1024**2

Select = Callable[[list], list]


def read_array_file(path, example: str = "{'H': H, 'y': y}", select: Select | None = None) -> dict:
    """The named arrays of a ``.npz`` (no pickles) or ``.pt`` (``torch.load(weights_only=True)``) file, with one-line
    InputErrors for pickled, truncated, oversized or non-dict contents. ``example`` shows the expected dict in the
    fix. ``select(names)`` sees the file's array names before any array is read and returns the names to read (it
    raises InputError for names it refuses); by default every array is read."""
    path = str(path)
    if path.endswith(".npz"):
        return _read_npz(path, select)
    return _read_pt(path, example, select)


def _corrupt(path: str, what: str = "is truncated or corrupt") -> InputError:
    return InputError(f"the .npz archive {what}", path=path, fix="save plain numeric arrays with np.savez")


def _read_npz(path: str, select: Select | None) -> dict:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise _corrupt(path) from None
    with archive:
        members = {(info.filename[:-4] if info.filename.endswith(".npy") else info.filename): info
                   for info in archive.infolist()}
        wanted = list(members) if select is None else select(list(members))
        infos = [members[name] for name in wanted]
        _check_expansion(infos, os.path.getsize(path), path)
        out = {}
        for name, info in zip(wanted, infos):
            try:
                out[name] = _read_member(archive, info, name, path)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
                if isinstance(e, InputError):
                    raise
                raise _corrupt(path, f"is truncated or corrupt (array {quoted(name)})") from None
        return out


def _check_expansion(infos: list, size: int, path: str) -> None:
    declared = sum(max(info.file_size, info.compress_size) for info in infos)
    if declared > max(SMALL_ARCHIVE, MAX_EXPANSION * size):
        raise InputError(f"the .npz archive declares {format_bytes(declared)} of arrays in {format_bytes(size)} "
                         f"(more than {MAX_EXPANSION}x): it is damaged or a zip bomb", path=path,
                         fix="save the arrays uncompressed with np.savez, or the features as a .safetensors "
                             "FeatureStore")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, path: str) -> np.ndarray:
    """One ``.npy`` member, after its header has been checked against the member's declared size."""
    if info.is_dir():
        raise InputError(f"archive member {quoted(info.filename)} is a folder, not a .npy array", path=path,
                         fix="save plain numeric arrays with np.savez")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise _corrupt(path, f"holds array {quoted(name)} in .npy version {version}, which nc-probe does not "
                                 "read")
        start = f.tell()
    if dtype.hasobject:
        raise InputError(f"the .npz archive holds pickled objects (array {quoted(name)})", path=path,
                         fix="save plain numeric arrays with np.savez")
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise _corrupt(path, f"declares array {quoted(name)} of shape {shape}: it is corrupt")
    nbytes = math.prod(shape) * dtype.itemsize
    if start + nbytes != info.file_size:
        held = format_bytes(max(info.file_size - start, 0))
        raise _corrupt(path, f"declares array {quoted(name)} of shape {_dims(shape)} {dtype} "
                             f"({format_bytes(nbytes)}) but holds {held}: it is truncated or corrupt")
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _dims(shape) -> str:
    text = str(tuple(shape))
    return text if len(text) <= 60 else text[:56] + "...)"


def _read_pt(path: str, example: str, select: Select | None) -> dict:
    import pickle

    import torch

    try:  # records of a torch.save zip may be compressed: the same bound as an npz
        with zipfile.ZipFile(path) as z:
            records = z.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        records = []  # not a zip (a legacy torch.save file), or a damaged one: torch.load says which
    _check_expansion(records, os.path.getsize(path), path)
    try:
        with warnings.catch_warnings():  # torch's own deprecation notes (quantized tensors, ...) are not for the user
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError("holds Python objects that weights_only loading refuses", path=path,
                         fix=f"save a dict of tensors, e.g. torch.save({example}, path)") from None
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes torch.load raise is one user error
        raise InputError(f"is truncated or not a torch.save file ({type(e).__name__})", path=path,
                         fix="save it again") from None
    if not isinstance(obj, dict):
        raise InputError(f"holds a {type(obj).__name__}, not a dict of arrays", path=path,
                         fix=f"save a dict of tensors, e.g. torch.save({example}, path)")
    odd = next((k for k in obj if not isinstance(k, str)), None)
    if odd is not None:
        raise InputError(f"holds a dict whose key {quoted(repr(odd))} is not an array name", path=path,
                         fix=f"save a dict of tensors, e.g. torch.save({example}, path)")
    wanted = list(obj) if select is None else select(list(obj))
    return {k: obj[k] for k in wanted}


def string_list(value, what: str, path) -> list[str] | None:
    """Class names as stored in an array file (a 1-D array of strings or of integers, or a list/tuple of strings),
    else one InputError naming ``what``."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif not isinstance(value, np.ndarray):  # a tensor (numbers, never strings), a dict, a string, ...
        raise InputError(f"{what} is a {type(value).__name__}, not a list of strings", path=path,
                         fix="store one name per class as a 1-D array of strings")
    else:
        a = value
        if a.ndim != 1 or a.dtype.kind not in "USiu":
            raise InputError(f"{what} is not a list of strings (it is an array of shape {a.shape}, dtype {a.dtype})",
                             path=path, fix="store one name per class as a 1-D array of strings")
        items = a.tolist() if a.dtype.kind in "US" else [str(c) for c in a.tolist()]  # class ids name themselves
    if not all(isinstance(c, (str, bytes)) for c in items):
        bad = next(c for c in items if not isinstance(c, (str, bytes)))
        raise InputError(f"{what} is not a list of strings (it holds a {type(bad).__name__})", path=path,
                         fix="store one name per class as a 1-D array of strings")
    return [c.decode("utf-8", "replace") if isinstance(c, bytes) else c for c in items]
