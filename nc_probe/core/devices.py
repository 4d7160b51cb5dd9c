"""Where inference and the statistics run: device resolution, autocast, and the statistics' device."""

from __future__ import annotations

import contextlib

import torch

from nc_probe.core.errors import InputError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def map_tensors(x, fn):
    """``fn`` applied to every tensor of an input batch: a tensor, a tuple/list or a dict of them (nested); anything
    else is returned as it is."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (tuple, list)):
        return type(x)(map_tensors(v, fn) for v in x)
    if isinstance(x, dict):
        return {k: map_tensors(v, fn) for k, v in x.items()}
    return x


def resolve_device(device="auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device that is not available is an InputError."""
    name = str(device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"{{device}} {device!r} is not a device", fix="pass auto, cpu, cuda, cuda:N or mps") \
            from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("{device=cuda}, but CUDA is not available here", fix="pass {device=cpu} or {device=auto}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("{device=mps}, but MPS is not available here", fix="pass {device=cpu} or {device=auto}")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"{{device}} {device!r} is not supported", fix="pass auto, cpu, cuda or mps")
    return dev


def amp_context(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for ``amp`` ("bf16", "fp16" or "off")."""
    if amp not in AMP_DTYPES:
        raise InputError(f"{{amp}} {amp!r} is not one of bf16, fp16, off",
                         fix="pass {amp=bf16}, {amp=fp16} or {amp=off}")
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def stats_device(device: torch.device) -> torch.device:
    """Where the float64 statistics live: the model's device, except MPS (no float64 there)."""
    return device if device.type == "cuda" else torch.device("cpu")
