"""File helpers every stage uses: the sha256 of an input, JSON-safe values, reading a JSON (or TOML) input, and
writing a file atomically.

Inputs nc-probe reads as a whole (report and baseline JSONs, gate TOML files, the trajectory's resume cache) go
through :func:`read_input`: a regular file (a FIFO would block the read forever, a device never end), of bounded
size, opened once and checked on the open file, so that the name cannot be swapped between the check and the read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from nc_probe.core.errors import InputError
from nc_probe.core.text import format_bytes

MAX_JSON_BYTES = 256 * 2**20  # a report, baseline or layer report larger than this is refused
MAX_TOML_BYTES = 16 * 2**20


def file_sha256(path) -> str:
    """sha256 of a file, read in 1 MiB blocks; of a folder (a Hugging Face save_pretrained checkpoint), the sha256
    of its regular files' names and digests, in name order."""
    if os.path.isdir(path):
        h = hashlib.sha256()
        for item in sorted(Path(path).iterdir()):
            if item.is_file() and not item.is_symlink():
                h.update(f"{item.name}\0{file_sha256(item)}\n".encode())
        return h.hexdigest()
    # one reused 1 MiB buffer: reading fresh 16 MiB blocks cost page faults, 2.1 s instead of 1.45 s per 2 GB (Xeon)
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def open_regular(path, what: str, fix: str, *, missing: str | None = "no such file"):
    """``path`` opened for reading in binary, once it is known to be a regular file (checked on the open file, so
    the name cannot be swapped in between; a pipe is opened without blocking and refused). One InputError naming
    the file, what is wrong and ``fix``; a file that is not there gives None when ``missing`` is None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        if missing is None:
            return None
        raise InputError(missing, path=path, fix=fix) from None
    except IsADirectoryError:
        raise InputError(f"is a folder, not a {what} file", path=path, fix=fix) from None
    except ValueError:  # an embedded NUL
        raise InputError("is not a valid file name", path=path, fix=fix) from None
    except OSError as e:
        raise InputError(f"cannot be read ({e.strerror})", path=path, fix=fix) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"is a folder, not a {what} file", path=path, fix=fix)
        if not stat.S_ISREG(mode):
            raise InputError(f"is not a regular file (a pipe, socket or device), so not a {what} file", path=path,
                             fix=fix)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input(path, what: str, fix: str, *, limit: int | None = None, missing: str = "no such file") -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`; at most ``limit`` bytes, default
    :data:`MAX_JSON_BYTES`), or one InputError naming the file, what is wrong and ``fix``."""
    limit = MAX_JSON_BYTES if limit is None else limit
    with open_regular(path, what, fix, missing=missing) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise InputError(f"is {format_bytes(size)}, larger than any {what} file nc-probe reads "
                             f"({format_bytes(limit)})", path=path, fix=fix)
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise InputError(f"cannot be read ({e.strerror})", path=path, fix=fix) from None
    if len(data) > limit:
        raise InputError(f"is larger than any {what} file nc-probe reads ({format_bytes(limit)})", path=path,
                         fix=fix)
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON (nc-probe writes an absent value as null)")


def read_json(path, what: str, fix: str, *, missing: str = "no such file") -> Any:
    """The JSON in ``path``, or one InputError naming the file as "not a readable {what} JSON" (with why: the
    line and column of a syntax error, a number with too many digits, NaN, nesting too deep) and ``fix``. The file
    is read through :func:`read_input`: a regular file of at most :data:`MAX_JSON_BYTES`."""
    data = read_input(path, f"{what} JSON", fix, missing=missing)
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise InputError(f"not a readable {what} JSON (not UTF-8 text)", path=path, fix=fix) from None
    except json.JSONDecodeError as e:
        raise InputError(f"not a readable {what} JSON ({e.msg} at line {e.lineno}, column {e.colno})", path=path,
                         fix=fix) from None
    except RecursionError:
        raise InputError(f"not a readable {what} JSON (nested too deeply)", path=path, fix=fix) from None
    except ValueError as e:  # NaN/Infinity, or an integer of more digits than Python converts
        reason = str(e) if "not JSON" in str(e) else "a number with too many digits"
        raise InputError(f"not a readable {what} JSON ({reason})", path=path, fix=fix) from None


def atomic_write_text(path, text: str | bytes) -> Path:
    """Write text (or bytes) via a temp file in the same folder and rename it into place, so no half-written file
    is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_safe(obj: Any) -> Any:
    """NaN/Inf are not JSON: they become null (absent), and numpy scalars and arrays become Python values."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):
        return json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
