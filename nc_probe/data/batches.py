"""Batches of ``(x, y)`` from an opened data source, in dataset order, with the class filter and limit applied;
each torchrun rank gets its own share of the samples."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from nc_probe.core import distributed
from nc_probe.core.devices import map_tensors
from nc_probe.core.errors import InputError
from nc_probe.data.datasets import X_NAMES, Y_NAMES, DataSource, collate


def iter_batches(source: DataSource, *, batch_size: int = 256, workers: int = 0,
                 pin_memory: bool = False) -> Iterator[tuple[Any, torch.Tensor]]:
    """Yield ``(x, y)`` batches in dataset order, with the class filter and limit applied; ``y`` is int64 (n,).

    A user DataLoader is iterated as it is (its own batch size and workers).
    """
    if batch_size < 1:
        raise InputError(f"{{batch_size}} must be at least 1, got {batch_size}", fix="pass e.g. {batch_size=256}")
    if workers < 0:
        raise InputError(f"{{workers}} must be >= 0, got {workers}", fix="pass {workers=0} to load in the main process")
    limit = source.limit
    if source.loader is not None:
        if distributed.active():
            raise InputError("a DataLoader cannot be split between torchrun processes", path=source.spec,
                             fix="return a map-style Dataset instead, or run a single process")
        loader = source.loader
    else:
        ds = source.dataset
        kw = dict(batch_size=batch_size, num_workers=workers, pin_memory=pin_memory, collate_fn=collate)
        if workers > 0:
            kw["prefetch_factor"] = 4
        indices = source.indices
        if distributed.active():
            indices, limit = _shard_indices(source), None
        if indices is not None:
            kw["sampler"] = indices.tolist()
        loader = DataLoader(ds, **kw)  # type: ignore[arg-type]  # kw: the keyword arguments above
    kept = 0
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except InputError as e:
            if "\n" in str(e):  # raised in a worker: the message carries the worker's traceback
                raise _batch_error(e, source) from None
            raise
        except Exception as e:  # noqa: BLE001 - turned into one-line user errors
            raise _batch_error(e, source) from None
        x, y = split_batch(batch, source.spec)
        if source.label_filter is not None:
            mask = torch.isin(y, torch.as_tensor(source.label_filter, dtype=torch.long))
            if not bool(mask.all()):
                x, y = index_inputs(x, mask), y[mask]
        if limit is not None and kept + len(y) > limit:
            keep = limit - kept
            x, y = index_inputs(x, slice(0, keep)), y[:keep]
        if len(y):
            kept += len(y)
            yield x, y
        if limit is not None and kept >= limit:
            return


def _shard_indices(source: DataSource) -> np.ndarray:
    """This torchrun rank's samples: every world_size-th of the kept indices, so each sample is seen once."""
    ds = source.dataset
    if isinstance(ds, IterableDataset) or not hasattr(ds, "__len__"):
        raise InputError("an iterable dataset cannot be split between torchrun processes", path=source.spec,
                         fix="use a map-style Dataset (with __len__ and __getitem__), or run a single process")
    idx = source.indices if source.indices is not None else np.arange(len(ds))
    if source.limit is not None:
        idx = idx[: source.limit]
    return idx[distributed.rank()::distributed.world_size()]


def _batch_error(e: Exception, source: DataSource) -> InputError:
    text = str(e)
    if "Caught InputError" in text or "InputError:" in text:
        # An InputError raised in a DataLoader worker comes back with the worker's traceback in its message.
        last = [ln for ln in text.strip().splitlines() if "InputError" in ln][-1]
        return InputError(last.split("InputError:", 1)[-1].strip())
    if "stack expects each tensor to be equal size" in text or "equal size" in text:
        return InputError("samples have different shapes and cannot form a batch", path=source.spec,
                          fix="pass {image_size} to resize images to one size")
    first = text.strip().splitlines()[-1][:160] if text.strip() else ""
    return InputError(f"reading the data failed: {type(e).__name__}: {first}", path=source.spec,
                      fix="check the data (try {workers=0} to see the error in the main process)")


def split_batch(batch, where=None) -> tuple[Any, torch.Tensor]:
    """``(x, y)`` from a collated batch: a tuple/list ``(x, y, ...)`` or a dict with input and label keys."""
    if isinstance(batch, dict):
        xk = next((k for k in (*X_NAMES, "image", "pixel_values", "img") if k in batch), None)
        yk = next((k for k in Y_NAMES if k in batch), None)
        if xk is None or yk is None:
            raise InputError(f"batches are dicts with keys {sorted(batch)[:6]}, without an input and a label key",
                             path=where, fix="return (x, y) pairs or dicts with keys x/image and y/label")
        x, y = batch[xk], batch[yk]
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        raise InputError(f"batches are {type(batch).__name__}s, not (x, y) pairs", path=where,
                         fix="make the dataset return (input, label) pairs")
    y = torch.as_tensor(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(f"labels have shape {tuple(y.shape)} and dtype {y.dtype}, not one class index per sample",
                         path=where, fix="return integer class indices, not one-hot vectors")
    return x, y.long()


def index_inputs(x: Any, index) -> Any:
    """Select rows of an input batch: a tensor, a tuple/list of tensors or a dict of tensors."""
    return map_tensors(x, lambda t: t[index])
