"""Loading a trained classifier from a checkpoint file, whatever its format (step 1 of the pipeline).

One entry point, :func:`load_model`, detects the format from the file's bytes (not its name):

- ``torch.save`` files holding a state_dict, bare or nested under ``state_dict`` / ``model`` / ``model_state_dict``
  / ``net``, plus an architecture (``arch``); PyTorch Lightning ``.ckpt`` files are the same with their keys under
  the LightningModule's attribute (``model.``), found automatically;
- safetensors weights plus an architecture;
- TorchScript archives (``torch.jit.save``) and ``torch.export`` programs (``torch.export.save``, ``.pt2``), which
  carry their own code and need no architecture;
- a fully pickled ``nn.Module``, only with ``trust_checkpoint=True``.

Security: ``torch.load`` always runs with ``weights_only=True`` unless the user trusts the file. Objects that
weights_only refuses but that are plain data (``argparse.Namespace``, numpy scalars, ...) are read as inert
placeholders (no code of theirs runs), so the usual training checkpoints load without trust. An architecture named
by the checkpoint itself is imported and called only when it is ``torchvision:``/``timm:``/``nc_probe.*``; any
other module must be confirmed with ``arch=`` (``--arch``) or ``trust_checkpoint``, since importing and calling a
name taken from an untrusted file runs code.

Architecture strings: ``torchvision:NAME``, ``timm:NAME``, ``package.module:factory`` or ``path/to/file.py:factory``,
called with ``arch_kwargs``. Checkpoint metadata (``{"nc_probe": {"arch": ..., "arch_kwargs": ..., "data": ...,
"split": ..., "class_names": ...}}``, or a top-level ``"arch"`` string as the PyTorch ImageNet example writes) fills
in what the user does not give.

Every problem is an :class:`~nc_probe.errors.InputError` whose one-line message names the file and the fix.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import trust as trust_rules
from .errors import InputError
from .store import holds_features
from .pickle_scan import is_pickle, pickle_globals
from .text import few, first_line

#: Keys under which training scripts nest the state_dict, in the order they are tried.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "network", "state_dict_ema")
#: Prefixes added by wrappers that are always removed: DistributedDataParallel/DataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: Keys a model may lack in an older checkpoint without any effect on inference.
IGNORABLE_MISSING = ("num_batches_tracked",)


@dataclass
class LoadedModel:
    """A model ready for inference, and what is known about it.

    ``model`` is an ``nn.Module`` (eval mode), a ``torch.jit.ScriptModule`` or a ``torch.export.ExportedProgram``.
    ``metadata`` is the checkpoint's ``"nc_probe"`` dict (arch, data, split, class_names, ...), possibly empty.
    ``format``: "state_dict", "lightning", "safetensors", "pickled", "torchscript", "export" or "module".
    ``notes``: what was done to make it load (prefixes stripped, placeholders used).
    """

    model: Any
    format: str
    source: str
    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- detection
def file_sha256(path) -> str:
    """sha256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def sniff(path) -> str:
    """The container format from the file's first bytes and, for zips, its member names.

    One of "torchscript", "export", "torch" (torch.save zip or legacy pickle), "safetensors", "npz", "empty",
    "unknown". Reads no tensor data.
    """
    path = str(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch"  # a truncated zip: torch.load gives the precise error
        if any(n.endswith(".npy") for n in names) and not any("/" in n for n in names):
            return "npz"
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith(("archive_format", "models/model.json")) or "/models/" in n for n in names):
            return "export"
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < 100 * 1024**2:
            return "safetensors"
    if head[0] == 0x80:  # pickle protocol 2+: torch.save(..., _use_new_zipfile_serialization=False)
        return "torch"
    return "unknown"


def is_checkpoint(path) -> bool:
    """True if ``path`` holds a model (checkpoint, TorchScript, export program, safetensors weights), False for a
    feature file (safetensors/.pt/.npz with features+labels arrays), a report or anything unreadable."""
    path = str(path)
    if not os.path.isfile(path) or path.endswith(".json"):
        return False
    kind = sniff(path)
    if kind in ("torchscript", "export"):
        return True
    if kind == "safetensors":
        names = _safetensors_names(path)
        return names is not None and not holds_features(names)
    if kind == "torch":
        import torch

        with open(path, "rb") as f:
            if is_pickle(f.read(2)) and not _is_legacy_torch(path):
                return True  # a raw pickle: load_model says what it would import, and refuses it
        try:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # mmap needs the zip format; legacy files load without it
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return True  # pickled objects: a checkpoint, and load_model explains what to do
        except Exception:  # noqa: BLE001 - unreadable: whoever opens it reports why
            return path.endswith((".ckpt", ".pth", ".pt2", ".bin"))
        return not (isinstance(obj, dict) and holds_features(obj))
    return False


def _safetensors_names(path: str) -> set | None:
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, MemoryError, OSError):
        return None
    return set(header) - {"__metadata__"} if isinstance(header, dict) else None


# ---------------------------------------------------------------------------------------------- entry point
def load_model(path, *, arch: str | None = None, arch_kwargs: dict | str | None = None,
               strip_prefix: str | None = None, trust_checkpoint: bool = False) -> LoadedModel:
    """Load the classifier in ``path`` for inference (eval mode, on CPU); see the module docstring.

    ``arch`` / ``arch_kwargs`` build the model for a state_dict (they override the checkpoint's metadata);
    ``strip_prefix`` removes a wrapper's prefix from the keys (``module.`` and ``_orig_mod.`` always are);
    ``trust_checkpoint`` allows unpickling arbitrary Python objects, e.g. a fully pickled ``nn.Module``.
    """
    import torch

    path = str(path)
    if not os.path.exists(path):
        raise InputError("no such file", path=path, fix="check the checkpoint path")
    if os.path.isdir(path):
        raise InputError("is a folder, not a checkpoint", path=path,
                         fix="pass a .pt/.pth/.ckpt/.safetensors/.pt2 file")
    if os.path.getsize(path) == 0:
        raise InputError("file is empty", path=path, fix="save the checkpoint again")
    kwargs = _parse_kwargs(arch_kwargs, path)
    kind = sniff(path)
    if kind == "torchscript":
        return _load_torchscript(path)
    if kind == "export":
        return _load_export(path)
    if kind == "safetensors":
        state, raw = _load_safetensors(path)
        meta, dropped = trust_rules.clean_metadata(raw)
        return _from_state_dict(state, meta, path, "safetensors", arch, kwargs, strip_prefix, trust_checkpoint,
                                _dropped_note(dropped))
    if kind == "npz":
        raise InputError("is a numpy .npz archive, not a model checkpoint", path=path,
                         fix="analyze it as a feature file (arrays H/features and y/labels) or pass a checkpoint")
    if kind in ("empty", "unknown"):
        raise InputError("is not a PyTorch checkpoint, TorchScript archive, torch.export program or safetensors "
                         "file", path=path, fix="pass a file written by torch.save, torch.jit.save, "
                                                "torch.export.save or safetensors")
    obj, notes = _torch_load(path, trust_checkpoint)
    if isinstance(obj, torch.nn.Module):
        return LoadedModel(_unwrap(obj).eval(), "pickled", path, notes=notes)
    if not isinstance(obj, dict):
        raise InputError(f"holds a {type(obj).__name__}, not a state_dict or a model", path=path,
                         fix="save model.state_dict() (or a dict with it under 'state_dict')")
    if holds_features(obj):
        raise InputError("is a feature file (features and labels), not a model checkpoint", path=path,
                         fix="analyze it directly, without model options")
    meta, dropped = trust_rules.clean_metadata(obj.get("nc_probe"))
    notes = notes + _dropped_note(dropped)
    if "arch" not in meta and isinstance(obj.get("arch"), str):
        meta["arch"] = obj["arch"] if ":" in obj["arch"] else f"torchvision:{obj['arch']}"
    lightning = any("lightning_version" in str(k) for k in obj) or {"state_dict", "hyper_parameters"} <= set(obj)
    state = _find_state_dict(obj, path, trust_checkpoint)
    if isinstance(state, torch.nn.Module):
        return LoadedModel(_unwrap(state).eval(), "pickled", path, metadata=meta, notes=notes)
    return _from_state_dict(state, meta, path, "lightning" if lightning else "state_dict", arch, kwargs,
                            strip_prefix, trust_checkpoint, notes)


def _parse_kwargs(arch_kwargs, path) -> dict | None:
    if arch_kwargs is None or isinstance(arch_kwargs, dict):
        return arch_kwargs
    try:
        value = json.loads(arch_kwargs)
    except json.JSONDecodeError as e:
        raise InputError(f"--arch-kwargs is not JSON ({e.msg})", path=path,
                         fix="""write e.g. '{"num_classes": 10}'""") from None
    if not isinstance(value, dict):
        raise InputError("--arch-kwargs must be a JSON object", path=path, fix="""write e.g. '{"num_classes": 10}'""")
    return value


# ---------------------------------------------------------------------------------------------- torch.load
class _Placeholder:
    """Stands in for an object that weights_only loading refuses; it runs no code and keeps nothing."""

    _nc_probe_placeholder = True

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return self


def _placeholder_class(qualname: str) -> type:
    module, _, name = qualname.rpartition(".")
    return type(name or qualname, (_Placeholder,), {"__module__": module, "_nc_probe_global": qualname})


def is_placeholder(obj) -> bool:
    return getattr(obj, "_nc_probe_placeholder", False)


#: Globals the weights_only unpickler reads by itself; a placeholder must never stand in for one of them.
_TORCH_OWN_GLOBALS = ("torch.", "collections.OrderedDict", "__builtin__.set", "builtins.set", "_codecs.encode")


def _torch_load(path: str, trust: bool):
    """``torch.load`` with weights_only (or not, when trusted); returns (object, notes).

    Objects weights_only refuses are replaced by inert placeholders when they are plain data the analysis does not
    need (an ``argparse.Namespace`` of hyper-parameters); a pickled module, or a raw pickle that is not a torch.save
    file at all, is refused with what it would import.
    """
    import torch

    with open(path, "rb") as f:
        head = f.read(2)
    raw = is_pickle(head) and not _is_legacy_torch(path)
    if trust:
        try:
            if raw:  # torch.load reads only its own formats; the user trusts this pickle
                with open(path, "rb") as f:
                    return pickle.load(f), ["loaded a raw pickle with --trust-checkpoint"]
            return torch.load(path, map_location="cpu", weights_only=False), ["loaded with --trust-checkpoint"]
        except (ModuleNotFoundError, AttributeError) as e:
            raise InputError(f"the pickled objects need code that cannot be imported ({first_line(e)})", path=path,
                             fix="run nc-probe where that code is importable (e.g. add it to PYTHONPATH)") from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as e:
            raise _corrupt(path, e) from None
    if raw:
        raise _pickled_error(path, pickle_globals(path), raw=True)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except pickle.UnpicklingError as e:
        refused = e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise _corrupt(path, e) from None
    if is_pickle(head):  # legacy torch.save format: torch cannot list its globals, the opcodes can
        names = [n for n in pickle_globals(path, limit=50) if not n.startswith(_TORCH_OWN_GLOBALS)]
    else:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - a damaged file: the first error says more
            names = []
    if not names:
        raise _corrupt(path, refused) from None
    stubs = [(_placeholder_class(n), n) for n in names]
    try:
        with torch.serialization.safe_globals(stubs):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the objects cannot even be read as data: treat as pickled code
        raise _pickled_error(path, names) from None
    if is_placeholder(obj):
        raise _pickled_error(path, names)
    return obj, [f"ignored pickled objects the analysis does not need ({few(names, 3)})"]


def _is_legacy_torch(path: str) -> bool:
    """Whether a pickle stream is a legacy (non-zip) torch.save file: its first pickle is torch's magic number."""
    import pickletools

    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("LONG1", "LONG4", "LONG", "INT"):
                    return arg == _LEGACY_MAGIC
                if op.name == "STOP":
                    return False
    except Exception:  # noqa: BLE001 - not decodable: not a torch file
        return False
    return False


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, the first pickle of a legacy file


def _corrupt(path: str, error) -> InputError:
    return InputError(f"is truncated or corrupt: torch.load failed ({first_line(error, 120)})", path=path,
                      fix="save or download the checkpoint again")


def _pickled_error(path: str, names, raw: bool = False) -> InputError:
    classes = [n for n in names if "torch.nn.modules" in n or n.rsplit(".", 1)[-1][:1].isupper()]
    shown = few(classes or list(names), 4)
    what = "a raw Python pickle (not a torch.save file)" if raw else "a pickled Python object"
    imports = f" (it imports {shown})" if shown else ""
    return InputError(f"holds {what} that would run arbitrary code when loaded{imports}; nc-probe refuses it",
                      path=path,
                      fix="pass --trust-checkpoint only if you trust its source, or re-save it as "
                          "torch.save(model.state_dict(), path) and pass --arch")


def _unwrap(model):
    """The user's module inside DDP/DataParallel and torch.compile wrappers."""
    for _ in range(4):
        inner = getattr(model, "_orig_mod", None)
        if inner is None and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = getattr(model, "module", None)
        if inner is None:
            return model
        model = inner
    return model


def _is_state_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values()) \
        and all(isinstance(k, str) for k in obj)


def _find_state_dict(obj: dict, path: str, trust: bool):
    """The state_dict (or, when trusted, the pickled module) inside a checkpoint dict."""
    import torch

    if _is_state_dict(obj):
        return obj
    for key in NESTED_KEYS:
        value = obj.get(key)
        if isinstance(value, torch.nn.Module):
            return value
        if _is_state_dict(value):
            return value
    for key in NESTED_KEYS:
        if is_placeholder(obj.get(key)):
            raise _pickled_error(path, [getattr(obj[key], "_nc_probe_global", type(obj[key]).__name__)])
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if len(tensors) >= 2:
        return tensors
    keys = [str(k) for k in obj][:8]
    raise InputError(f"found no state_dict in the checkpoint (top-level keys: {', '.join(keys)})", path=path,
                     fix="save model.state_dict(), bare or under 'state_dict'")


# ---------------------------------------------------------------------------------------------- other formats
def _load_safetensors(path: str):
    try:
        from safetensors import safe_open
    except ImportError:
        raise InputError("reading safetensors weights needs the safetensors package", path=path,
                         fix="pip install safetensors") from None
    try:
        state = {}
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                state[k] = f.get_tensor(k)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise InputError(f"is truncated or not a valid safetensors file ({first_line(e, 120)})",
                         path=path, fix="write it again with safetensors.torch.save_file") from None
    names = set(state)
    if holds_features(names):
        raise InputError("is a feature file (features and labels), not model weights", path=path,
                         fix="analyze it directly, without model options")
    nc = {}
    if "nc_probe" in meta:
        try:
            nc = json.loads(meta["nc_probe"])
        except json.JSONDecodeError:
            nc = {}
    elif "arch" in meta:
        nc = {"arch": meta["arch"]}
    return state, nc if isinstance(nc, dict) else {}


def _load_torchscript(path: str) -> LoadedModel:
    import torch

    extra = {"nc_probe.json": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, not its archives
            model = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    except Exception as e:  # noqa: BLE001 - the TorchScript loader raises RuntimeError with long C++ messages
        raise InputError(f"is a damaged TorchScript archive ({first_line(e, 120)})", path=path,
                         fix="save it again with torch.jit.save") from None
    meta = {}
    if extra["nc_probe.json"]:
        try:
            meta = json.loads(extra["nc_probe.json"])
        except (json.JSONDecodeError, TypeError):
            meta = {}
    meta, dropped = trust_rules.clean_metadata(meta)
    return LoadedModel(model.eval(), "torchscript", path, metadata=meta, notes=_dropped_note(dropped))


def _dropped_note(dropped: list[str]) -> list[str]:
    return [f"ignored metadata of an unexpected type: {', '.join(dropped)}"] if dropped else []


def _load_export(path: str) -> LoadedModel:
    import torch

    try:
        program = torch.export.load(path)
    except Exception as e:  # noqa: BLE001 - many failure types (format version, damaged zip, AOTInductor package)
        raise InputError(f"is not a loadable torch.export program ({first_line(e, 120)})",
                         path=path, fix="save it with torch.export.save (AOTInductor packages are not supported)") \
            from None
    return LoadedModel(program, "export", path)


# ---------------------------------------------------------------------------------------------- architectures
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
    meta_kwargs = meta.get("arch_kwargs") if isinstance(meta.get("arch_kwargs"), dict) else {}
    if user_arch:
        kwargs = dict(meta_kwargs) if user_arch == meta_arch else {}
        kwargs.update(user_kwargs or {})
        return ArchChoice(user_arch, kwargs, consented=True)
    if not meta_arch:
        raise InputError("holds only weights (a state_dict) and no architecture", path=path,
                         fix="pass --arch torchvision:NAME, timm:NAME or package.module:factory "
                             "(with --arch-kwargs '{\"num_classes\": C}' if needed)")
    if not trust:
        trust_rules.check_file_arch(meta_arch, meta_kwargs, path=path)
    kwargs = dict(meta_kwargs)
    kwargs.update(user_kwargs or {})
    return ArchChoice(meta_arch, kwargs, consented=trust)


def build_model(arch: str, kwargs: dict | None = None, *, path=None, consented: bool = True):
    """Instantiate ``arch`` (``torchvision:NAME``, ``timm:NAME``, ``package.module:factory`` or
    ``file.py:factory``) with ``kwargs``. Never downloads weights: they come from the checkpoint.

    ``consented=False`` (an architecture read from a file): only the allowlist of :mod:`nc_probe.trust` resolves;
    torchvision and timm names go through their registries, a sample factory through its exact name, and no module
    is imported by a name from the file.
    """
    import torch

    kwargs = trust_rules.drop_fetching_kwargs(dict(kwargs or {}))
    if ":" not in arch:
        raise InputError(f"--arch {arch!r} has no ':'", path=path,
                         fix="write torchvision:resnet18, timm:NAME or package.module:factory")
    scheme, _, name = arch.partition(":")
    if scheme in ("torchvision", "timm"):
        factory = _registry_factory(arch, scheme, name, path)
    elif not consented:
        if arch not in trust_rules.SAMPLE_FACTORIES:  # resolve_arch checked this; a second lock on the door
            raise InputError(f"names its architecture {arch}, which is not allowlisted", path=path,
                             fix=f"pass --arch {arch} to confirm (or --trust-checkpoint)")
        from .samples import FACTORIES

        factory = FACTORIES[arch]
    else:
        factory = import_object(arch, what="--arch", path=path)
        if not callable(factory):
            raise InputError(f"--arch {arch} is not callable", path=path, fix="name a function or class")
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise InputError(f"--arch {arch} rejected its arguments ({e})", path=path,
                         fix="check --arch-kwargs against the factory's signature") from None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - user code: report, do not crash
        raise InputError(f"--arch {arch} failed: {type(e).__name__}: {first_line(e)}", path=path,
                         fix="check --arch and --arch-kwargs") from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"--arch {arch} returned a {type(model).__name__}, not a torch.nn.Module", path=path,
                         fix="name a factory that builds the model")
    return model


def _registry_factory(arch: str, scheme: str, name: str, path):
    """A factory for ``torchvision:NAME`` / ``timm:NAME`` that looks NAME up in the library's model registry (never
    an attribute walk or an import by name), with pretrained weights off."""
    if trust_rules.registry_arch(arch) is None:
        raise InputError(f"--arch {arch}: {name!r} is not a {scheme} model name", path=path,
                         fix=f"see {scheme}'s list of models for the names")
    if scheme == "torchvision":
        try:
            import torchvision.models as tvm
        except ImportError:
            raise InputError(f"--arch {arch} needs torchvision, which is not installed", path=path,
                             fix="pip install torchvision, or pass --arch package.module:factory") from None
        try:
            tvm.get_model_builder(name)
        except (ValueError, KeyError):
            raise InputError(f"torchvision has no model {name!r}", path=path,
                             fix="see torchvision.models.list_models() for the names") from None
        return lambda **kw: tvm.get_model(name, weights=None, **kw)
    try:
        import timm
    except ImportError:
        raise InputError(f"--arch {arch} needs timm, which is not installed", path=path,
                         fix="pip install timm, or pass --arch package.module:factory") from None
    if not timm.is_model(name):
        raise InputError(f"timm has no model {name!r}", path=path, fix="see timm.list_models() for the names")
    return lambda **kw: timm.create_model(name, pretrained=False, **kw)


def import_object(spec: str, *, what: str, path=None):
    """``package.module:attr.attr`` or ``path/to/file.py:attr`` -> the object."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise InputError(f"{what} {spec!r} is not of the form package.module:name", path=path,
                         fix="write e.g. mypkg.models:resnet18")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise InputError(f"{what} {spec}: no such file {file}", path=path, fix="check the path")
            mod_spec = importlib.util.spec_from_file_location(f"nc_probe_user_{file.stem}", file)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except InputError:
        raise
    except ImportError as e:
        raise InputError(f"{what} {spec}: cannot import {module_name} ({e})", path=path,
                         fix="install it or run where it is importable (e.g. set PYTHONPATH)") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{what} {spec}: {module_name} has no attribute {attr!r}", path=path,
                             fix="check the name after the ':'")
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------------------------------------- state dicts
def _from_state_dict(state, meta, path, fmt, arch, kwargs, strip_prefix, trust, notes) -> LoadedModel:
    choice = resolve_arch(arch, kwargs, meta, path, trust)
    arch_name, arch_kwargs = choice.arch, choice.kwargs
    model = build_model(arch_name, arch_kwargs, path=path, consented=choice.consented)
    state, more = match_state_dict(state, model.state_dict(), path=path, strip_prefix=strip_prefix,
                                   arch=arch_name)
    model.load_state_dict(state, strict=False)
    return LoadedModel(model.eval(), fmt, path, arch=arch_name, arch_kwargs=arch_kwargs, metadata=meta,
                       notes=notes + more)


def strip_wrapper_prefixes(keys) -> dict:
    """Map each key to its name without DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes."""
    out = {}
    for k in keys:
        new = k.replace("._orig_mod.", ".")
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if new.startswith(p):
                    new, changed = new[len(p):], True
        out[k] = new
    return out


def match_state_dict(state: dict, expected: dict, *, path=None, strip_prefix=None, arch=None) -> tuple[dict, list]:
    """Rename ``state``'s keys to the model's (``expected``) and check that names and shapes agree.

    Applies, in order: ``strip_prefix`` (keys without it are dropped), the wrapper prefixes, and, when the keys
    still do not match, the one leading component (``model.`` of Lightning, ``net.``, ``backbone.``...) under which
    all of the model's keys are found. Returns (renamed state, notes); raises InputError listing a few missing and
    unexpected keys, or the first shape mismatch.
    """
    notes = []
    if strip_prefix:
        kept = {k[len(strip_prefix):]: v for k, v in state.items() if k.startswith(strip_prefix)}
        if not kept:
            raise InputError(f"no key starts with --strip-prefix {strip_prefix!r} (keys look like "
                             f"{few(list(state), 3)})", path=path, fix="check the prefix, including its dot")
        notes.append(f"kept the {len(kept)} keys under {strip_prefix!r} and removed that prefix")
        state = kept
    want = set(expected)
    renamed = strip_wrapper_prefixes(state)
    # Only when it helps: a model may itself have a sub-module called "module".
    if any(k != v for k, v in renamed.items()) and len(want & set(renamed.values())) > len(want & set(state)):
        notes.append("removed DDP/torch.compile prefixes (module., _orig_mod.)")
        state = {renamed[k]: v for k, v in state.items()}
    if not want <= set(state):
        prefix = _covering_prefix(state, want)
        if prefix:
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            notes.append(f"used the keys under {prefix!r} (e.g. a Lightning module's attribute)")
    missing = [k for k in expected if k not in state and not k.endswith(IGNORABLE_MISSING)]
    unexpected = [k for k in state if k not in want]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({few(missing, 3)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({few(unexpected, 3)})")
        fix = "check --arch and --arch-kwargs, or pass --strip-prefix with a wrapper's key prefix"
        raise InputError(f"state_dict keys do not match {arch or 'the architecture'}: " + "; ".join(parts),
                         path=path, fix=fix)
    for k, v in expected.items():
        if k in state and tuple(state[k].shape) != tuple(v.shape):
            fix = "check --arch and --arch-kwargs"
            if len(v.shape) >= 1 and len(state[k].shape) == len(v.shape) and state[k].shape[1:] == v.shape[1:] \
                    and k.endswith(("weight", "bias")):
                fix = f"""build the model with the checkpoint's size, e.g. --arch-kwargs '{{"num_classes": """ \
                      f"""{state[k].shape[0]}}}' if {k} is the classifier"""
            raise InputError(f"shape mismatch for {k}: checkpoint {tuple(state[k].shape)}, {arch or 'model'} "
                             f"{tuple(v.shape)}", path=path, fix=fix)
    return state, notes


def _covering_prefix(state: dict, want: set) -> str | None:
    firsts = {k.split(".", 1)[0] + "." for k in state if "." in k}
    for p in sorted(firsts):
        under = {k[len(p):] for k in state if k.startswith(p)}
        if want <= under or (want - under and all(m.endswith(IGNORABLE_MISSING) for m in want - under)):
            return p
    return None
