"""Name the Python globals a pickle would import, without unpickling it.

Used to say *what* a refused pickle asks for (``os.system``, ``mymodule.Net``). ``pickletools.genops`` only
decodes opcodes, it never imports or calls anything, so this is safe on hostile files. The names are for the
message only: nc-probe refuses such files whatever this finds.
"""

from __future__ import annotations

import pickletools

STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
MAX_PICKLES = 4  # a legacy torch.save file is a few pickles (magic, protocol, system info, the object) then raw data


def is_pickle(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a pickle stream (protocol 2 or later), i.e. not a zip archive."""
    return head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5


def pickle_globals(path, limit: int = 20) -> list[str]:
    """``module.name`` of each global the pickle stream(s) at the start of ``path`` reference, in order, at most
    ``limit``; [] when none is found or the stream cannot be decoded."""
    found: list[str] = []
    try:
        with open(path, "rb") as f:
            for _ in range(MAX_PICKLES):
                _scan_one(f, found, limit)
                head = f.read(2)
                if len(found) >= limit or not is_pickle(head):
                    break
                f.seek(-len(head), 1)
    except Exception:  # noqa: BLE001 - a damaged or non-pickle stream: report what was found before it
        pass
    return list(dict.fromkeys(found))[:limit]


def _scan_one(f, found: list[str], limit: int) -> None:
    strings: list[str] = []  # the string operands pushed so far: STACK_GLOBAL takes the last two
    memo: dict[int, object] = {}
    last: object = None
    for op, arg, _ in pickletools.genops(f):
        name = op.name
        if name in STRING_OPS:
            last = arg
            strings.append(str(arg))
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            last = memo.get(int(arg))  # type: ignore[arg-type]  # GET opcodes carry an integer
            if isinstance(last, str):
                strings.append(last)
        elif name == "MEMOIZE":
            memo[len(memo)] = last
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = last  # type: ignore[arg-type]  # PUT opcodes carry an integer
        elif name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
        else:
            last = None
        if len(found) >= limit or name == "STOP":
            return
