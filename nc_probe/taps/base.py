"""The base of every tap, and the helpers they share."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nc_probe.core.devices import map_tensors
from nc_probe.core.errors import InputError


class Tap:
    """Calls a model and returns ``(features (n, d) float32, logits (n, C) or None)``.

    After the first call: ``layer`` names what is tapped (e.g. ``"head (input)"``), ``W``/``b`` are the final
    linear classifier as float64 numpy arrays when the tap is its input (else None), ``num_outputs`` is the
    number of classes the model predicts when known.
    """

    layer: str = ""
    W: np.ndarray | None = None
    b: np.ndarray | None = None
    num_outputs: int | None = None
    static_batch: int | None = None

    def to(self, device: torch.device, channels_last: bool = False) -> Tap:
        return self

    def __call__(self, x):
        raise NotImplementedError

    def close(self) -> None:
        """Remove hooks; the model is left as it was."""

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def call_model(model, x) -> Any:
    """``model(x)`` (``x`` a tensor, a tuple of positional inputs or a dict of keyword inputs). Floating inputs are
    cast to the dtype of the model's first floating parameter when they differ (float32 data into a float64 or
    float16 model failed on its first layer); integer inputs (token ids) are left as they are."""
    dtype = _float_dtype(model)
    if dtype is not None:
        x = map_tensors(x, lambda t: t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t)
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def _float_dtype(model) -> torch.dtype | None:
    if not isinstance(model, torch.nn.Module):
        return None
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def flatten_rows(t, where: str) -> torch.Tensor:
    if isinstance(t, (tuple, list)):
        t = next((v for v in t if isinstance(v, torch.Tensor)), None)
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{where} produced no tensor to tap", fix="pick another {layer} (see nc-probe inspect)")
    if t.ndim == 0:
        raise InputError(f"{where} produced a scalar, not one feature vector per sample",
                         fix="pick another {layer} (see nc-probe inspect)")
    return t.reshape(t.shape[0], -1)


def logits_of(out, n: int, num_outputs: int | None):
    """The model's output when it looks like the logits of its final nn.Linear (n, num_outputs)."""
    if num_outputs is not None and isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == n \
            and out.is_floating_point() and out.shape[1] == num_outputs:
        return out
    return None


def numpy64(t) -> np.ndarray | None:
    return None if t is None else t.detach().to("cpu", torch.float64).numpy().copy()


def suggest_names(name: str, names: list) -> str:
    import difflib

    close = difflib.get_close_matches(name, names, n=3)
    pool = close or names[:6]
    return ", ".join(pool) + (", ..." if not close and len(names) > 6 else "")


def get_attr_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj
