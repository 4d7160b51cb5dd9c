"""Architectures: which model class rebuilds a state_dict, and building it.

The user's ``arch`` is theirs to choose (any import path, or a file). An architecture named by the checkpoint
itself resolves only through the allowlist of :mod:`nc_probe.load.trust` unless the user trusts the file:
torchvision and timm names through their registries, the sample factories by exact name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from nc_probe.core.errors import InputError
from nc_probe.core.imports import import_object
from nc_probe.core.text import first_line, format_bytes, quoted
from nc_probe.load import trust as trust_rules


@dataclass(frozen=True)
class ArchChoice:
    """The architecture to build: its string, keyword arguments, and whether it may run arbitrary code (the user
    named it, or trusts the file) or must resolve through the allowlist of :mod:`nc_probe.load.trust`."""

    arch: str
    kwargs: dict
    consented: bool


def resolve_arch(user_arch, user_kwargs, meta: dict, path: str, trust: bool) -> ArchChoice:
    """The user's architecture, else the checkpoint's: only an allowlisted one (:mod:`nc_probe.load.trust`) unless the
    user trusts the file, since importing and calling a name read from a file runs code."""
    meta_arch = meta.get("arch")
    found = meta.get("arch_kwargs")
    meta_kwargs: dict = found if isinstance(found, dict) else {}
    if user_arch:
        kwargs = dict(meta_kwargs) if user_arch == meta_arch else {}
        kwargs.update(user_kwargs or {})
        return ArchChoice(user_arch, kwargs, consented=True)
    if not meta_arch:
        raise InputError("holds only weights (a state_dict) and no architecture", path=path,
                         fix="pass {arch=torchvision:NAME}, {arch=timm:NAME} or {arch=package.module:factory} "
                             "(with {arch_kwargs} such as '{\"num_classes\": C}' if needed)")
    if not trust:
        trust_rules.check_file_arch(meta_arch, meta_kwargs, path=path)
    kwargs = dict(meta_kwargs)
    kwargs.update(user_kwargs or {})
    return ArchChoice(meta_arch, kwargs, consented=trust)


def build_model(arch: str, kwargs: dict | None = None, *, path=None, consented: bool = True,
                budget: BuildBudget | None = None) -> torch.nn.Module:
    """Instantiate ``arch`` (``torchvision:NAME``, ``timm:NAME``, ``package.module:factory`` or
    ``file.py:factory``) with ``kwargs``. Never downloads weights: they come from the checkpoint.

    ``consented=False`` (an architecture read from a file): only the allowlist of :mod:`nc_probe.load.trust` resolves;
    torchvision and timm names go through their registries, a sample factory through its exact name, and no module
    is imported by a name from the file. ``budget``: the factory runs under that :class:`BuildBudget` (how many
    tensors it may create, and how many bytes on a real device), and an overrun is an InputError.
    """
    return construct(arch_factory(arch, path=path, consented=consented), arch, kwargs, path=path, budget=budget)


def arch_factory(arch: str, *, path=None, consented: bool = True) -> Callable[..., Any]:
    """The callable that builds ``arch`` (see :func:`build_model`); nothing is called yet."""
    if ":" not in arch:
        raise InputError(f"the architecture {quoted(arch)} has no ':'", path=path,
                         fix="pass {arch=torchvision:resnet18}, {arch=timm:NAME} or {arch=package.module:factory}")
    scheme, _, name = arch.partition(":")
    if scheme in ("torchvision", "timm"):
        return _registry_factory(arch, scheme, name, path)
    if arch in trust_rules.SAMPLE_FACTORIES:
        # the samples' names are stable identifiers written into checkpoints, not import paths: the factories have
        # moved between modules since, and a file saved by an older nc-probe must still load
        from nc_probe.load.samples import FACTORIES

        return FACTORIES[arch]
    if not consented:  # resolve_arch checked this; a second lock on the door
        raise InputError(f"names its architecture {quoted(arch)}, which is not allowlisted", path=path,
                         fix="if you trust it, pass that name yourself as {arch}, or pass {trust_checkpoint=True}")
    factory = import_object(arch, what="{arch}", path=path)
    if not callable(factory):
        raise InputError(f"the architecture {quoted(arch)} is not callable", path=path,
                         fix="name a function or class as {arch}")
    return factory


def construct(factory, arch: str, kwargs: dict | None = None, *, path=None, device=None,
              budget: BuildBudget | None = None) -> torch.nn.Module:
    """``factory(**kwargs)``, under ``device`` as the default device (``"meta"``: shapes only, no memory) and
    ``budget``; every failure is a one-line InputError."""
    import contextlib

    kwargs = trust_rules.drop_fetching_kwargs(dict(kwargs or {}))
    name = quoted(arch)
    try:
        with budget if budget is not None else contextlib.nullcontext(), \
                torch.device(device) if device is not None else contextlib.nullcontext():
            model = factory(**kwargs)
    except Exception as e:  # noqa: BLE001 - user code, or a registry's: report, do not crash
        if budget is not None and budget.over:
            raise budget.error(arch, path) from None
        if isinstance(e, InputError):
            raise
        if isinstance(e, TypeError):
            raise FactoryError(f"the architecture {name} rejected its arguments ({quoted(first_line(e), 160)})",
                             path=path, fix="check {arch_kwargs} against the factory's signature") from None
        raise FactoryError(f"building the architecture {name} failed ({type(e).__name__}: "
                         f"{quoted(first_line(e), 160)})", path=path, fix="check {arch} and {arch_kwargs}") from None
    if budget is not None and budget.over:  # the factory caught the overrun and went on
        raise budget.error(arch, path)
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"the architecture {name} returned a {type(model).__name__}, not a torch.nn.Module",
                         path=path, fix="name a factory that builds the model as {arch}")
    return model


class FactoryError(InputError):
    """The factory raised (on the meta device, possibly only there: see :func:`construct`)."""


def module_bytes(model: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (persistent or not), each tensor counted once; meta tensors
    count what they would take on a real device."""
    seen: dict[int, int] = {}
    for t in (*model.parameters(), *model.buffers()):
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


class BuildBudget(TorchFunctionMode):
    """What a factory may create while it builds a model for a checkpoint: at most ``max_tensors`` tensors made
    from nothing (``torch.empty``, ``zeros``, ...) and, on a real device, at most ``max_bytes`` in them, so that a
    keyword argument read from a file (``{"hidden": 10**6}``, ``{"depth": 10**7}``) cannot exhaust memory or time.
    The size a tensor factory is asked for is checked before it allocates.

    Bounds relative to the checkpoint (:meth:`for_state`): a model that fits it has about one such tensor per entry
    of its state_dict, and its bytes. A torch function mode, like ``torch.device``'s own: enter it before the
    device context so that it sees the device that context adds.
    """

    def __init__(self, max_tensors: int, max_bytes: int, *, tensors: int = 0, nbytes: int = 0):
        super().__init__()
        self.max_tensors, self.max_bytes = max_tensors, max_bytes
        self.held_tensors, self.held_bytes = tensors, nbytes
        self.tensors = self.bytes = 0
        self.over = ""

    @classmethod
    def for_state(cls, state: dict) -> BuildBudget:
        tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        return cls(8 * len(tensors) + 10_000, 2 * nbytes + EXTRA_BYTES, tensors=len(tensors), nbytes=nbytes)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_leaves

        kwargs = kwargs or {}
        made = not any(isinstance(a, torch.Tensor) for a in tree_leaves((args, kwargs)))
        if made and not self.over and self.bytes + _requested_bytes(func, args, kwargs) > self.max_bytes:
            self.over = f"more than {format_bytes(self.max_bytes)}"
        if self.over:
            raise InputError(f"building the model would create {self.over}")  # the factory may catch it: see over
        out = func(*args, **kwargs)
        if made:
            outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            self.tensors += len(outs)
            self.bytes += sum(t.numel() * t.element_size() for t in outs if t.device.type != "meta")
            if self.tensors > self.max_tensors:
                self.over = f"more than {self.max_tensors} tensors"
            elif self.bytes > self.max_bytes:
                self.over = f"more than {format_bytes(self.max_bytes)}"
        return out

    def check_model(self, model: torch.nn.Module, arch: str, path) -> None:
        """Refuse a built model (on the meta device, before any memory is taken) whose parameters and buffers,
        saved or not, exceed the budget's bytes."""
        need = module_bytes(model)
        if need > self.max_bytes:
            raise InputError(f"the architecture {quoted(arch)} would take {format_bytes(need)} of parameters and "
                             f"buffers, more than twice the checkpoint's {format_bytes(self.held_bytes)} plus "
                             f"{format_bytes(EXTRA_BYTES)}; nc-probe did not build it", path=path, fix=BUDGET_FIX)

    def error(self, arch: str, path) -> InputError:
        return InputError(f"building the architecture {quoted(arch)} would create {self.over}, while the checkpoint "
                          f"holds {self.held_tensors} tensors ({format_bytes(self.held_bytes)}); nc-probe stopped "
                          "it", path=path, fix=BUDGET_FIX)


#: Memory a model may take beyond twice its checkpoint's tensors: buffers that are not saved (attention masks,
#: position tables) and the temporaries of its initialisation.
EXTRA_BYTES = 256 * 1024**2
BUDGET_FIX = ("check the architecture's keyword arguments (pass {arch_kwargs} to override the checkpoint's), or pass "
              "{trust_checkpoint=True} if you trust the file")


def _requested_bytes(func, args, kwargs) -> int:
    """Bytes a tensor factory (``torch.empty(3, 4)``, ``torch.zeros((3, 4))``, ``torch.full(size, v)``) is asked
    for, before it allocates; 0 for other functions and on the meta device (which takes none)."""
    if getattr(func, "__name__", "") not in SIZED_FACTORIES:
        return 0
    device = kwargs.get("device")
    if device is not None and torch.device(device).type == "meta":
        return 0
    size = kwargs.get("size", args[0] if args else None)
    if isinstance(size, int) and func.__name__ != "full":
        size = [a for a in args if isinstance(a, int)] if all(isinstance(a, int) for a in args) else None
    if not isinstance(size, (list, tuple)) or not all(isinstance(n, int) for n in size):
        return 0
    dtype = kwargs.get("dtype")
    itemsize = (dtype if isinstance(dtype, torch.dtype) else torch.get_default_dtype()).itemsize
    return math.prod(max(int(n), 0) for n in size) * itemsize


#: Tensor factories whose first argument (or leading integer arguments) is the size.
SIZED_FACTORIES = ("empty", "zeros", "ones", "full", "rand", "randn", "empty_strided")


def _registry_factory(arch: str, scheme: str, name: str, path):
    """A factory for ``torchvision:NAME`` / ``timm:NAME`` that looks NAME up in the library's model registry (never
    an attribute walk or an import by name), with pretrained weights off."""
    if trust_rules.registry_arch(arch) is None:
        raise InputError(f"the architecture {quoted(arch)}: {quoted(name)} is not a {scheme} model name", path=path,
                         fix=f"see {scheme}'s list of models for the names")
    if scheme == "torchvision":
        try:
            import torchvision.models as tvm
        except ImportError:
            raise InputError(f"the architecture {quoted(arch)} needs torchvision, which is not installed", path=path,
                             fix="pip install torchvision, or pass {arch=package.module:factory}") from None
        try:
            tvm.get_model_builder(name)
        except (ValueError, KeyError):
            raise InputError(f"torchvision has no model {quoted(name)}", path=path,
                             fix="see torchvision.models.list_models() for the names") from None
        return lambda **kw: tvm.get_model(name, weights=None, **kw)
    try:
        import timm
    except ImportError:
        raise InputError(f"the architecture {quoted(arch)} needs timm, which is not installed", path=path,
                         fix="pip install timm, or pass {arch=package.module:factory}") from None
    if not timm.is_model(name):
        raise InputError(f"timm has no model {quoted(name)}", path=path, fix="see timm.list_models() for the names")
    return lambda **kw: timm.create_model(name, pretrained=False, **kw)
