"""The files a command writes: checked before any work starts, written all together at the end.

A run on a 2 GB feature file should not end after minutes with "cannot write", and ``--json`` pointing at the
input must not overwrite it. So every output path is checked first (a writable folder to put it in, not an input,
no two outputs on one path). Then the command writes every output into a staging folder beside its target (the
same file system, so the final move is a rename), and :meth:`OutputSet.transaction` moves the whole set into place
only when the command succeeded: an error or Ctrl-C leaves nothing new behind. Ctrl-C during the final moves is
held until they are done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

#: Suffixes a folder output receives (an input file with one of them inside that folder could be overwritten).
DIR_SUFFIXES = {"out": (".json", ".csv", ".parquet", ".md"), "plots": (".png", ".svg")}


@dataclass(frozen=True)
class Output:
    flag: str  # the option as the user typed it, for messages
    path: Path
    is_dir: bool


class OutputSet:
    """The outputs of one command. ``outputs``: flag -> path (None: not asked for); ``dirs``: the flags whose
    path is a folder; ``inputs``: paths the command reads, which no output may replace."""

    def __init__(self, outputs: Mapping[str, Path | str | None], *, dirs=(), inputs=()):
        self.outputs = [Output(flag, Path(p), flag in dirs) for flag, p in outputs.items() if p is not None]
        self.inputs = [p for p in map(_input_path, inputs) if p is not None]
        self._check()

    # ------------------------------------------------------------------ checks, before any work
    def _check(self) -> None:
        seen: dict[Path, str] = {}
        for o in self.outputs:
            where = _absolute(o.path)
            if where in seen:
                raise InputError(f"{o.flag} and {seen[where]} name the same path", path=o.path,
                                 fix="give each output its own path")
            seen[where] = o.flag
            self._check_place(o)
        for o in self.outputs:  # a file output inside a folder output, with a name the folder will receive
            for d in (x for x in self.outputs if x.is_dir and x is not o and not o.is_dir):
                if _absolute(o.path).parent == _absolute(d.path) and o.path.suffix in DIR_SUFFIXES.get(
                        d.flag.lstrip("-"), ()):
                    raise InputError(f"{o.flag} writes into the folder of {d.flag}, which writes files of that "
                                     "kind there", path=o.path, fix=f"put {o.flag} outside {d.path}")
        for o in self.outputs:
            for i in self.inputs:
                if _same_file(o.path, i) or (o.is_dir and i.exists() and _absolute(i).parent == _absolute(o.path)
                                             and i.suffix in DIR_SUFFIXES.get(o.flag.lstrip("-"), ())):
                    raise InputError(f"{o.flag} would overwrite an input of this run", path=o.path,
                                     fix=f"write {o.flag} somewhere else")

    @staticmethod
    def _check_place(o: Output) -> None:
        p = o.path
        if p.exists():
            if o.is_dir and not p.is_dir():
                raise InputError(f"{o.flag} names a file, not a folder", path=p, fix="pass a folder")
            if not o.is_dir and p.is_dir():
                raise InputError(f"{o.flag} names a folder, not a file", path=p, fix="pass a file path")
        parent = _existing_ancestor(p if o.is_dir else p.parent)
        if parent is None or not parent.is_dir():
            raise InputError(f"{o.flag} cannot be created: {parent} is not a folder", path=p,
                             fix="choose a path under an existing folder")
        if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
            raise InputError(f"{o.flag} is not writable", path=p, fix="choose a writable path")

    # ------------------------------------------------------------------ staged writing
    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Path]]:
        """Yield flag -> staging path; move every staged output into place when the block succeeds."""
        stages: list[Path] = []
        staged: dict[str, Path] = {}
        try:
            for o in self.outputs:
                final = _absolute(o.path)
                base = _existing_ancestor(final if o.is_dir else final.parent)
                stage = Path(tempfile.mkdtemp(prefix=".nc-probe-staging-", dir=base))
                stages.append(stage)
                staged[o.flag] = stage / final.name
                if o.is_dir:
                    staged[o.flag].mkdir()
            yield staged
            with _interrupts_held():
                for o in self.outputs:
                    _move_into_place(staged[o.flag], _absolute(o.path), o.is_dir)
        finally:
            for stage in stages:
                shutil.rmtree(stage, ignore_errors=True)


def _move_into_place(src: Path, dst: Path, is_dir: bool) -> None:
    if not src.exists():
        return  # an output the command had nothing to write to
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not is_dir:
        # with its companions (a report's side file of matrices), written beside it in its own staging folder
        for item in sorted(src.parent.iterdir()):
            if item != src:
                os.replace(item, dst.parent / item.name)
        os.replace(src, dst)
        return
    dst.mkdir(parents=True, exist_ok=True)
    for item in sorted(src.rglob("*")):
        target = dst / item.relative_to(src)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            os.replace(item, target)


@contextlib.contextmanager
def _interrupts_held():
    """Defer Ctrl-C until the block ends (the final renames take milliseconds; half a set is worse)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _absolute(p: Path) -> Path:
    return Path(os.path.abspath(p))


def _existing_ancestor(p: Path) -> Path | None:
    p = _absolute(p)
    for candidate in (p, *p.parents):
        if candidate.exists():
            return candidate
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
    return False


def _input_path(p) -> Path | None:
    """The file behind an input (``sample:NAME`` resolved), or None for what is not a local file (a data spec)."""
    if p is None:
        return None
    if str(p).startswith("sample:"):
        from ..locate import resolve_input

        try:
            return resolve_input(p)
        except InputError:
            return None
    return Path(p) if os.path.exists(str(p)) else None
