"""``torch.load`` that runs no code from the file unless the user trusts it.

``weights_only=True`` always, unless trusted. Objects that weights_only refuses but that are plain data
(``argparse.Namespace`` of hyper-parameters, numpy scalars) are read as inert placeholders, so the usual training
checkpoints load without trust. A pickled module, or a raw pickle that is not a torch.save file at all, is refused
with the names of what it would import (read from the opcodes by :mod:`nc_probe.load.pickle_scan`, never unpickled).
"""

from __future__ import annotations

import pickle
import zipfile
from typing import Any

from nc_probe.core.errors import InputError
from nc_probe.core.text import few, first_line, quoted
from nc_probe.load.pickle_scan import is_pickle, pickle_globals


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


def torch_load(path: str, trust: bool) -> tuple[Any, list[str]]:
    """``torch.load`` with weights_only (or not, when trusted); returns (object, notes).

    Objects weights_only refuses are replaced by inert placeholders when they are plain data the analysis does not
    need (an ``argparse.Namespace`` of hyper-parameters); a pickled module, or a raw pickle that is not a torch.save
    file at all, is refused with what it would import.
    """
    import torch

    with open(path, "rb") as f:
        head = f.read(2)
    raw = is_pickle(head) and not is_legacy_torch(path)
    if trust:
        try:
            if raw:  # torch.load reads only its own formats; the user trusts this pickle
                with open(path, "rb") as f:
                    return pickle.load(f), ["loaded a raw pickle, trusted (trust_checkpoint)"]
            return torch.load(path, map_location="cpu", weights_only=False), ["loaded with trust_checkpoint"]
        except (ModuleNotFoundError, AttributeError) as e:
            raise InputError("the pickled objects need code that cannot be imported "
                             f"({quoted(first_line(e), 120)})", path=path,
                             fix="run nc-probe where that code is importable (e.g. add it to PYTHONPATH)") from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as e:
            raise _corrupt(path, e) from None
    if raw:
        raise pickled_error(path, pickle_globals(path), raw=True)
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
        with torch.serialization.safe_globals(stubs):  # type: ignore[arg-type]  # classes are callables
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the objects cannot even be read as data: treat as pickled code
        raise pickled_error(path, names) from None
    if is_placeholder(obj):
        raise pickled_error(path, names)
    return obj, [f"ignored pickled objects the analysis does not need ({few(map(quoted, names[:4]), 3)})"]


def is_legacy_torch(path: str) -> bool:
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
    return InputError(f"is truncated or corrupt: torch.load failed ({quoted(first_line(error, 120), 140)})", path=path,
                      fix="save or download the checkpoint again")


def pickled_error(path: str, names, raw: bool = False) -> InputError:
    classes = [n for n in names if "torch.nn.modules" in n or n.rsplit(".", 1)[-1][:1].isupper()]
    shown = few(map(quoted, (classes or list(names))[:5]), 4)
    what = "a raw Python pickle (not a torch.save file)" if raw else "a pickled Python object"
    imports = f" (it imports {shown})" if shown else ""
    return InputError(f"holds {what} that would run arbitrary code when loaded{imports}; nc-probe refuses it",
                      path=path,
                      fix="pass {trust_checkpoint=True} only if you trust its source, or re-save it as "
                          "torch.save(model.state_dict(), path) and pass {arch}")
