"""Import an object the user names: ``package.module:attr.attr`` or ``path/to/file.py:attr``.

Only for names the user typed (``--arch``, ``--data``) or consented to: a name read from a file goes through the
allowlist of :mod:`nc_probe.load.trust` first.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from nc_probe.core.errors import InputError


def import_object(spec: str, *, what: str, path=None) -> Any:
    """The object ``spec`` names. ``what`` names the setting in messages (a placeholder such as ``{arch}``)."""
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
            if mod_spec is None or mod_spec.loader is None:
                raise InputError(f"{what} {spec}: {file} cannot be imported", path=path, fix="check the file")
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
