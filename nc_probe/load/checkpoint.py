"""Loading a trained classifier from a checkpoint file, whatever its format (step 1 of the pipeline).

One entry point, :func:`load_model`, detects the format from the file's bytes (not its name):

- ``torch.save`` files holding a state_dict, bare or nested under ``state_dict`` / ``model`` / ``model_state_dict``
  / ``net``, plus an architecture (``arch``); PyTorch Lightning ``.ckpt`` files are the same with their keys under
  the LightningModule's attribute (``model.``), found automatically;
- safetensors weights plus an architecture;
- TorchScript archives (``torch.jit.save``) and ``torch.export`` programs (``torch.export.save``, ``.pt2``), which
  carry their own code and need no architecture: code, so only with ``trust_checkpoint=True``;
- a fully pickled ``nn.Module``, only with ``trust_checkpoint=True``.

Security (docs/security.md): nothing in the file runs code unless the user trusts it (:mod:`nc_probe.load.safe_load` for
pickles, :mod:`nc_probe.load.trust` for names in the metadata, :mod:`nc_probe.load.architectures` for building the
model on the meta device first, under a budget). TorchScript archives and torch.export programs are recognised by
:func:`sniff` from their members and refused before ``torch.jit.load`` / ``torch.export.load`` is called; text from
the file is quoted in messages (:func:`nc_probe.core.text.quoted`).

Architecture strings: ``torchvision:NAME``, ``timm:NAME``, ``package.module:factory`` or ``path/to/file.py:factory``,
called with ``arch_kwargs``. Checkpoint metadata (``{"nc_probe": {"arch": ..., "arch_kwargs": ..., "data": ...,
"split": ..., "class_names": ...}}``, or a top-level ``"arch"`` string as the PyTorch ImageNet example writes) fills
in what the user does not give.

Every problem is an :class:`~nc_probe.core.errors.InputError` whose one-line message names the file and the fix.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
import zipfile

from nc_probe.core.errors import InputError
from nc_probe.core.feature_checks import holds_features
from nc_probe.core.settings import ModelSettings
from nc_probe.core.text import first_line, quoted
from nc_probe.load import trust as trust_rules
from nc_probe.load.architectures import BuildBudget, FactoryError, arch_factory, construct, resolve_arch
from nc_probe.load.architectures import build_model as build_model  # re-exported: nc_probe.load.checkpoint.build_model
from nc_probe.load.loaded_model import LoadedModel
from nc_probe.load.pickle_scan import is_pickle
from nc_probe.load.safe_load import is_legacy_torch, is_placeholder, pickled_error, torch_load
from nc_probe.load.state_dicts import match_state_dict

#: Keys under which training scripts nest the state_dict, in the order they are tried.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "network", "state_dict_ema")


# ---------------------------------------------------------------------------------------------- detection
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
        if not names:  # an empty archive: np.savez of nothing, or a broken download
            return "npz" if path.endswith(".npz") else "unknown"
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith(("archive_format", "models/model.json", "serialized_exported_program.json"))
               or "/models/" in n for n in names):
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
    if os.path.isdir(path):
        from nc_probe.load.hf import is_hf_folder

        return is_hf_folder(path)
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
            if is_pickle(f.read(2)) and not is_legacy_torch(path):
                return True  # a raw pickle: load_model says what it would import, and refuses it
        try:
            with warnings.catch_warnings():  # torch's deprecation notes about the file's tensors: not the user's
                warnings.simplefilter("ignore")
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
    except (struct.error, ValueError, RecursionError, MemoryError, OSError):  # ValueError: bad JSON, huge integers
        return None
    return set(header) - {"__metadata__"} if isinstance(header, dict) else None


# ---------------------------------------------------------------------------------------------- entry point
def load_model(path, settings: ModelSettings | None = None, **shortcuts) -> LoadedModel:
    """Load the classifier in ``path`` for inference (eval mode, on CPU); see the module docstring.

    ``settings`` (or its fields as keywords): ``arch`` / ``arch_kwargs`` build the model for a state_dict (they
    override the checkpoint's metadata); ``strip_prefix`` removes a wrapper's prefix from the keys (``module.`` and
    ``_orig_mod.`` always are); ``trust_checkpoint`` allows unpickling arbitrary Python objects, loading (and so
    running) TorchScript archives and torch.export programs, code named by the file, and a model beyond the
    build budget.
    """
    import dataclasses

    s = dataclasses.replace(settings or ModelSettings(), **shortcuts)
    path = str(path)
    if not os.path.exists(path):
        raise InputError("no such file", path=path, fix="check the checkpoint path")
    if os.path.isdir(path):
        from nc_probe.load.hf import is_hf_folder, load_hf_folder

        if is_hf_folder(path):
            return load_hf_folder(path, trust=s.trust_checkpoint)
        raise InputError("is a folder, not a checkpoint", path=path,
                         fix="pass a .pt/.pth/.ckpt/.safetensors/.pt2 file")
    if os.path.getsize(path) == 0:
        raise InputError("file is empty", path=path, fix="save the checkpoint again")
    kind = sniff(path)
    if kind in PROGRAMS:  # decided from the bytes, before torch.jit.load or torch.export.load sees the file
        if not s.trust_checkpoint:
            raise program_error(path, kind)
        return _load_torchscript(path) if kind == "torchscript" else _load_export(path)
    if kind == "safetensors":
        state, raw, notes = _load_safetensors(path)
        meta, dropped = trust_rules.clean_metadata(raw)
        return _from_state_dict(state, meta, path, "safetensors", s, notes + _dropped_note(dropped))
    if kind == "npz":
        raise InputError("is a numpy .npz archive, not a model checkpoint", path=path,
                         fix="analyze it as a feature file (arrays H/features and y/labels) or pass a checkpoint")
    if kind in ("empty", "unknown"):
        raise InputError("is not a PyTorch checkpoint, TorchScript archive, torch.export program or safetensors "
                         "file", path=path, fix="pass a file written by torch.save, torch.jit.save, "
                                                "torch.export.save or safetensors")
    return _load_torch_file(path, s)


def _load_torch_file(path: str, s: ModelSettings) -> LoadedModel:
    """A ``torch.save`` file: a state_dict (bare, nested, Lightning) and its metadata, or a trusted pickled module."""
    import torch

    obj, notes = torch_load(path, s.trust_checkpoint)
    if isinstance(obj, torch.nn.Module):
        return LoadedModel(_unwrap(obj).eval(), "pickled", path, notes=notes)
    if not isinstance(obj, dict):
        raise InputError(f"holds a {type(obj).__name__}, not a state_dict, a model or a dict of feature arrays",
                         path=path, fix="save model.state_dict() (or a dict with it under 'state_dict'), or features "
                                        "as torch.save({'H': H, 'y': y}, path)")
    if holds_features(obj):
        if notes:  # features beside objects weights_only refuses: not a checkpoint, and not a clean feature file
            raise InputError("holds features and labels beside pickled Python objects that nc-probe does not "
                             "unpickle", path=path, fix="save only the arrays, e.g. torch.save({'H': H, 'y': y}, "
                                                        "path)")
        raise InputError("is a feature file (features and labels), not a model checkpoint", path=path,
                         fix="analyze it directly, without model options")
    meta, dropped = trust_rules.clean_metadata(obj.get("nc_probe"))
    notes = notes + _dropped_note(dropped)
    if "arch" not in meta and isinstance(obj.get("arch"), str):
        meta["arch"] = obj["arch"] if ":" in obj["arch"] else f"torchvision:{obj['arch']}"
    lightning = any("lightning_version" in str(k) for k in obj) or {"state_dict", "hyper_parameters"} <= set(obj)
    state = _find_state_dict(obj, path)
    if isinstance(state, torch.nn.Module):
        return LoadedModel(_unwrap(state).eval(), "pickled", path, metadata=meta, notes=notes)
    return _from_state_dict(state, meta, path, "lightning" if lightning else "state_dict", s, notes)


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


def _find_state_dict(obj: dict, path: str):
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
            raise pickled_error(path, [getattr(obj[key], "_nc_probe_global", type(obj[key]).__name__)])
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if len(tensors) >= 2:
        return tensors
    keys = [quoted(k, 40) for k in list(obj)[:8]]
    raise InputError(f"found no state_dict in the checkpoint (top-level keys: {', '.join(keys)})", path=path,
                     fix="save model.state_dict(), bare or under 'state_dict'")


# ---------------------------------------------------------------------------------------------- other formats
#: Formats that carry code: refused unless the user trusts the file (see docs/security.md).
PROGRAMS = {
    "torchscript": "a TorchScript archive: loading it runs code the archive carries (its __setstate__ methods), and "
                   "its forward is arbitrary code",
    "export": "a torch.export program: loading it can unpickle Python objects stored in it (weights marked "
              "use_pickle, sample inputs), and its graph runs as code",
}
PROGRAM_FIX = ("re-save a state_dict with torch.save(model.state_dict(), path) and pass {arch}, or pass "
               "{trust_checkpoint=True} if you trust its source")


def program_error(path: str, kind: str) -> InputError:
    """The refusal of a TorchScript archive or torch.export program the user does not trust."""
    return InputError(f"is {PROGRAMS[kind]}; nc-probe does not run it without your consent", path=path,
                      fix=PROGRAM_FIX)


def _json_object(text) -> dict | None:
    """A JSON object from a file's metadata string; None when it is not one (bad JSON, too deep, a number too long
    to convert, or another type)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError, TypeError):  # ValueError covers JSONDecodeError and the int digit limit
        return None
    return value if isinstance(value, dict) else None


def _safetensors_metadata(path: str) -> dict:
    """The ``__metadata__`` of a safetensors header, checked as the format defines it (strings to strings) before
    the safetensors library reads the file, so that a wrong type is named rather than reported as damage."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))  # sniff bounded n
    except (struct.error, ValueError, RecursionError, MemoryError) as e:
        raise InputError(f"has a safetensors header that is not valid JSON ({type(e).__name__})", path=path,
                         fix="write it again with safetensors.torch.save_file") from None
    if not isinstance(header, dict):
        raise InputError("has a safetensors header that is not a JSON object", path=path,
                         fix="write it again with safetensors.torch.save_file")
    meta = header.get("__metadata__")
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise InputError("has a safetensors __metadata__ that is not a map of strings to strings (the only kind the "
                         "format allows)", path=path,
                         fix="write each metadata value as a string (json.dumps for structured values) with "
                             "safetensors.torch.save_file")
    return meta


def _load_safetensors(path: str):
    """``(state, nc_probe metadata, notes)`` of a safetensors weights file."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise InputError("reading safetensors weights needs the safetensors package", path=path,
                         fix="pip install safetensors") from None
    meta = _safetensors_metadata(path)
    try:
        state = {}
        with safe_open(path, framework="pt", device="cpu") as f:
            for k in f.keys():
                state[k] = f.get_tensor(k)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise InputError(f"is truncated or not a valid safetensors file ({quoted(first_line(e, 120), 140)})",
                         path=path, fix="write it again with safetensors.torch.save_file") from None
    names = set(state)
    if holds_features(names):
        raise InputError("is a feature file (features and labels), not model weights", path=path,
                         fix="analyze it directly, without model options")
    nc: dict = {}
    notes = []
    if "nc_probe" in meta:
        found = _json_object(meta["nc_probe"])
        if found is None:
            notes.append("ignored the file's nc_probe metadata: it is not a JSON object")
        nc = found or {}
    elif "arch" in meta:
        nc = {"arch": meta["arch"]}
    return state, nc, notes


def _load_torchscript(path: str) -> LoadedModel:
    """A TorchScript archive, which runs its own code: only for a file the user trusts."""
    import torch

    extra = {"nc_probe.json": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, not its archives
            model = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    except Exception as e:  # noqa: BLE001 - the TorchScript loader raises RuntimeError with long C++ messages
        raise InputError(f"could not be loaded as a TorchScript archive ({quoted(first_line(e, 120), 140)})",
                         path=path, fix="save it again with torch.jit.save") from None
    notes = ["loaded a TorchScript archive, trusted (trust_checkpoint): its code runs"]
    meta: dict = {}
    if extra["nc_probe.json"]:
        found = _json_object(extra["nc_probe.json"])
        if found is None:
            notes.append("ignored the archive's nc_probe.json: it is not a JSON object")
        meta = found or {}
    meta, dropped = trust_rules.clean_metadata(meta)
    return LoadedModel(model.eval(), "torchscript", path, metadata=meta, notes=notes + _dropped_note(dropped))


def _dropped_note(dropped: list[str]) -> list[str]:
    return [f"ignored metadata of an unexpected type: {', '.join(quoted(k) for k in dropped)}"] if dropped else []


def _load_export(path: str) -> LoadedModel:
    """A torch.export program, which may unpickle objects and runs its graph: only for a file the user trusts."""
    import torch

    try:
        program = torch.export.load(path)
    except Exception as e:  # noqa: BLE001 - many failure types (format version, damaged zip, AOTInductor package)
        raise InputError(f"is not a loadable torch.export program ({quoted(first_line(e, 120), 140)})",
                         path=path, fix="save it with torch.export.save (AOTInductor packages are not supported)") \
            from None
    return LoadedModel(program, "export", path, notes=["loaded a torch.export program, trusted (trust_checkpoint): "
                                                       "its code runs"])


# ---------------------------------------------------------------------------------------------- state dicts
def _from_state_dict(state, meta, path, fmt, s: ModelSettings, notes) -> LoadedModel:
    """Build the architecture and load ``state`` into it.

    The model is first built on the meta device (shapes, no memory) and matched to the checkpoint's names and
    shapes; only a model that fits is built on the CPU. Unless the file is trusted, both builds run under a
    :class:`~nc_probe.load.architectures.BuildBudget` relative to the checkpoint's tensors, and a model whose parameters
    and buffers exceed it is refused: keyword arguments read from a file cannot exhaust memory. A factory that
    cannot build on the meta device (it reads values of tensors it made) is built on the CPU under the budget.
    """
    choice = resolve_arch(s.arch, dict(s.arch_kwargs or {}) or None, meta, path, s.trust_checkpoint)
    arch_name, arch_kwargs = choice.arch, choice.kwargs
    factory = arch_factory(arch_name, path=path, consented=choice.consented)

    def budget():
        return None if s.trust_checkpoint else BuildBudget.for_state(state)

    first = budget()
    try:
        model = construct(factory, arch_name, arch_kwargs, path=path, device="meta", budget=first)
        on_meta = True
    except FactoryError:  # a factory that reads values of the tensors it made: build for real, under a budget
        model, on_meta = construct(factory, arch_name, arch_kwargs, path=path, budget=budget()), False
    state, more = match_state_dict(state, model.state_dict(), path=path, strip_prefix=s.strip_prefix,
                                   arch=quoted(arch_name))
    if first is not None:
        first.check_model(model, arch_name, path)
    if on_meta:
        model = construct(factory, arch_name, arch_kwargs, path=path, budget=budget())
        state, _ = match_state_dict(state, model.state_dict(), path=path, arch=quoted(arch_name))
    model.load_state_dict(state, strict=False)
    return LoadedModel(model.eval(), fmt, path, arch=arch_name, arch_kwargs=arch_kwargs, metadata=meta,
                       notes=notes + more)
