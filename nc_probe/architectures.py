"""Architectures: which model class rebuilds a state_dict, and building it.

The user's ``arch`` is theirs to choose (any import path, or a file). An architecture named by the checkpoint
itself resolves only through the allowlist of :mod:`nc_probe.trust` unless the user trusts the file:
torchvision and timm names through their registries, the sample factories by exact name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import trust as trust_rules
from .errors import InputError
from .imports import import_object
from .text import first_line


@dataclass(frozen=True)
class ArchChoice:
    """The architecture to build: its string, keyword arguments, and whether it may run arbitrary code (the user
    named it, or trusts the file) or must resolve through the allowlist of :mod:`nc_probe.trust`."""

    arch: str
    kwargs: dict
    consented: bool


def resolve_arch(user_arch, user_kwargs, meta: dict, path: str, trust: bool) -> ArchChoice:
    """The user's architecture, else the checkpoint's: only an allowlisted one (:mod:`nc_probe.trust`) unless the
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


def build_model(arch: str, kwargs: dict | None = None, *, path=None, consented: bool = True) -> torch.nn.Module:
    """Instantiate ``arch`` (``torchvision:NAME``, ``timm:NAME``, ``package.module:factory`` or
    ``file.py:factory``) with ``kwargs``. Never downloads weights: they come from the checkpoint.

    ``consented=False`` (an architecture read from a file): only the allowlist of :mod:`nc_probe.trust` resolves;
    torchvision and timm names go through their registries, a sample factory through its exact name, and no module
    is imported by a name from the file.
    """
    import torch

    kwargs = trust_rules.drop_fetching_kwargs(dict(kwargs or {}))
    if ":" not in arch:
        raise InputError(f"{{arch}} {arch!r} has no ':'", path=path,
                         fix="write torchvision:resnet18, timm:NAME or package.module:factory")
    scheme, _, name = arch.partition(":")
    if scheme in ("torchvision", "timm"):
        factory = _registry_factory(arch, scheme, name, path)
    elif not consented:
        if arch not in trust_rules.SAMPLE_FACTORIES:  # resolve_arch checked this; a second lock on the door
            raise InputError(f"names its architecture {arch}, which is not allowlisted", path=path,
                             fix=f"pass {{arch={arch}}} to confirm (or {{trust_checkpoint=True}})")
        from .samples import FACTORIES

        factory = FACTORIES[arch]
    else:
        factory = import_object(arch, what="{arch}", path=path)
        if not callable(factory):
            raise InputError(f"{{arch}} {arch} is not callable", path=path, fix="name a function or class")
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise InputError(f"{{arch}} {arch} rejected its arguments ({e})", path=path,
                         fix="check {arch_kwargs} against the factory's signature") from None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - user code: report, do not crash
        raise InputError(f"{{arch}} {arch} failed: {type(e).__name__}: {first_line(e)}", path=path,
                         fix="check {arch} and {arch_kwargs}") from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{{arch}} {arch} returned a {type(model).__name__}, not a torch.nn.Module", path=path,
                         fix="name a factory that builds the model")
    return model


def _registry_factory(arch: str, scheme: str, name: str, path):
    """A factory for ``torchvision:NAME`` / ``timm:NAME`` that looks NAME up in the library's model registry (never
    an attribute walk or an import by name), with pretrained weights off."""
    if trust_rules.registry_arch(arch) is None:
        raise InputError(f"{{arch}} {arch}: {name!r} is not a {scheme} model name", path=path,
                         fix=f"see {scheme}'s list of models for the names")
    if scheme == "torchvision":
        try:
            import torchvision.models as tvm
        except ImportError:
            raise InputError(f"{{arch}} {arch} needs torchvision, which is not installed", path=path,
                             fix="pip install torchvision, or pass {arch=package.module:factory}") from None
        try:
            tvm.get_model_builder(name)
        except (ValueError, KeyError):
            raise InputError(f"torchvision has no model {name!r}", path=path,
                             fix="see torchvision.models.list_models() for the names") from None
        return lambda **kw: tvm.get_model(name, weights=None, **kw)
    try:
        import timm
    except ImportError:
        raise InputError(f"{{arch}} {arch} needs timm, which is not installed", path=path,
                         fix="pip install timm, or pass {arch=package.module:factory}") from None
    if not timm.is_model(name):
        raise InputError(f"timm has no model {name!r}", path=path, fix="see timm.list_models() for the names")
    return lambda **kw: timm.create_model(name, pretrained=False, **kw)
