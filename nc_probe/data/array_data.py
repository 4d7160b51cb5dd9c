"""Data as arrays: ``x`` (N, ...) inputs and ``y`` (N,) integer labels, from a ``.npz``/``.pt`` data file or from
Python; :class:`ArrayDataset` serves them a whole batch at a time. Every problem with the arrays (pickles, names,
dtypes, shapes, labels, NaN inputs) is one InputError naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from nc_probe.core.errors import InputError
from nc_probe.core.feature_checks import MAX_LABEL, dtype_name
from nc_probe.core.text import quoted
from nc_probe.data.array_files import read_array_file, string_list
from nc_probe.data.image_folder import normalisation_tensors

X_NAMES = ("x", "X", "inputs", "input", "images", "data")
Y_NAMES = ("y", "Y", "labels", "targets", "label", "target")


class ArrayDataset(Dataset):
    """In-memory ``x`` (N, ...) float32 and ``y`` (N,) int64, fetched a whole batch at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean=None, std=None):
        self.x, self.y = x, y
        self.targets = y.numpy()
        self.norm = normalisation_tensors(mean, std, x.shape[1] if x.ndim >= 2 else 1, x.ndim)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        if self.norm is not None:
            x = (x - self.norm[0][0]) / self.norm[1][0]
        return x, self.y[i]

    def __getitems__(self, indices):
        # One indexing op per batch instead of one per sample plus a collate of N small tensors.
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.x[idx]
        if self.norm is not None:
            x = (x - self.norm[0]) / self.norm[1]
        return RowBatch(x, self.y[idx])


class RowBatch(tuple):
    """A batch already stacked by ``__getitems__``; :func:`collate` passes it through."""

    def __new__(cls, x, y):
        return super().__new__(cls, (x, y))


def collate(items) -> Any:
    """Default collate, except for batches that a dataset's ``__getitems__`` stacked itself."""
    if isinstance(items, RowBatch):
        return tuple(items)
    return torch.utils.data.default_collate(items)


def as_arrays(x, y, where):
    """Inputs ``x`` (N, ...) as float32 and labels ``y`` (N,) as int64 tensors, every problem one InputError."""
    x, y = _plain(x, "x", where), _plain(y, "y", where)
    if x.ndim == 0 or y.ndim == 0:
        raise InputError(f"{'x' if x.ndim == 0 else 'y'} is a single value, not one entry per sample", path=where,
                         fix="store x as (N, ...) inputs and y as (N,) integer labels")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != len(x):
        raise InputError(f"x has {len(x)} rows but y has shape {tuple(y.shape)}", path=where,
                         fix="store one integer label per row of x")
    if len(x) == 0:
        raise InputError("holds no samples", path=where, fix="store at least one row")
    labels = torch.from_numpy(_class_indices(y, where))
    if x.dtype not in (np.uint8, np.float32):
        x = x.astype(np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if xt.dtype == torch.uint8:
        xt = xt.float() / 255.0
        if xt.ndim == 4 and xt.shape[-1] in (1, 3, 4) and xt.shape[1] not in (1, 3, 4):
            xt = xt.permute(0, 3, 1, 2).contiguous()
    finite = torch.isfinite(xt).reshape(len(xt), -1).all(1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise InputError(f"x holds NaN or Inf (first at sample {row}; values beyond float32 count as Inf)",
                         path=where, fix="drop or repair those samples")
    return xt, labels


def _plain(a, name: str, where) -> np.ndarray:
    """An array of real numbers (numpy), from a dense tensor, an array or nested lists."""
    if isinstance(a, torch.Tensor):
        odd = ("a sparse" if a.layout != torch.strided else "a quantized" if a.is_quantized else
               "a complex" if a.is_complex() else "a meta" if a.device.type == "meta" else None)
        if odd is None:
            t = a.detach().cpu()
            try:
                return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
            except TypeError:
                odd = f"a {str(t.dtype).removeprefix('torch.')}"
        raise InputError(f"{name} is {odd} tensor, not a plain array of real numbers", path=where,
                         fix="save dense float32 inputs and integer labels")
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError):
        arr = np.asarray(None)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name} holds {dtype_name(arr.dtype)} data, not numbers", path=where,
                         fix="store numeric arrays: x as inputs, y as integer labels")
    return arr


def _class_indices(y: np.ndarray, where) -> np.ndarray:
    """Labels as int64 class indices: whole, finite, non-negative and small enough to index classes."""
    if y.dtype.kind == "f" and (not np.all(np.isfinite(y)) or np.any(y != np.round(y))):
        raise InputError("labels y are not whole numbers", path=where, fix="store class indices 0..C-1")
    if y.dtype.kind in "fu" and y.max() >= MAX_LABEL:
        raise InputError(f"label {y.max():.3g} is too large to be a class index", path=where,
                         fix="store class indices 0..C-1")
    out = y.astype(np.int64)
    if out.min() < 0:
        raise InputError(f"negative label {int(out.min())}", path=where, fix="store class indices 0..C-1")
    return out


def _array_keys(arrays: list, split, where: str) -> dict:
    """Which arrays of a data file are the inputs, the labels and the class names, for ``split``."""
    suffix = ""
    splits = sorted({k.split("_", 1)[1] for k in arrays if k.startswith(("x_", "X_")) and "_" in k})
    if splits:
        pick = split or ("train" if "train" in splits else splits[0])
        if pick not in splits:
            raise InputError(f"has no split {quoted(pick)} (it has {', '.join(quoted(s) for s in splits[:8])})",
                             path=where, fix=f"pass {{split={splits[0]}}}")
        suffix, split = f"_{pick}", pick
    elif split:
        raise InputError(f"has one set of arrays and no splits, but {{split={split}}} was given", path=where,
                         fix="leave {split} out, or store x_train/y_train, x_test/y_test")
    xk = next((k + suffix for k in X_NAMES if k + suffix in arrays), None)
    yk = next((k + suffix for k in Y_NAMES if k + suffix in arrays), None)
    if xk is None or yk is None:
        found = ", ".join(quoted(k, 30) for k in sorted(arrays)[:8]) or "none"
        raise InputError(f"needs arrays x and y (found {found})", path=where,
                         fix="save them as x (inputs) and y (integer labels)")
    names = next((k for k in ("class_names", "classes") if k in arrays), None)
    return {"x": xk, "y": yk, "names": names, "split": split}


def read_data_file(path: Path, split, mean, std) -> tuple[ArrayDataset, list | None, str | None]:
    """A ``.npz``/``.pt`` data file: ``(dataset, class names or None, split)``. Only the arrays of ``split`` are
    read, chosen by name from the archive's directory before anything is decompressed."""
    where = str(path)
    if path.stat().st_size == 0:
        raise InputError("file is empty", path=where, fix="save the arrays again")
    if path.suffix not in (".npz", ".pt", ".pth"):
        raise InputError("is not a data file nc-probe reads", path=where,
                         fix="pass a .npz/.pt of arrays x and y, an image folder or a data spec")
    keys: dict = {}

    def select(names: list) -> list:
        keys.update(_array_keys(names, split, where))
        return [k for k in (keys["x"], keys["y"], keys["names"]) if k is not None]

    arrays = read_array_file(path, example="{'x': x, 'y': y}", select=select)
    x, y = as_arrays(arrays[keys["x"]], arrays[keys["y"]], where)
    names = None if keys["names"] is None else string_list(arrays[keys["names"]], keys["names"], where)
    return ArrayDataset(x, y, mean, std), names, keys["split"]
