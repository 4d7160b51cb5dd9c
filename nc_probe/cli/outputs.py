"""The files a command writes: checked before any work starts, written all together at the end.

A run on a 2 GB feature file should not end after minutes with "cannot write", and ``--json`` pointing at an input
must not overwrite it. So every output path is checked first against every path the run reads (checkpoints, data
files and folders, ``--arch FILE.py:fn``, ``--class-map``, baselines, configs): not an input, not inside an input
folder, a writable folder to put it in, no two outputs on one path, no folder standing where a file will go. Then the
command writes every output into a staging folder beside its target (the same file system, so the final move is a
rename), and :meth:`OutputSet.transaction` moves the whole set into place only when the command succeeded: an
error or Ctrl-C leaves nothing new behind. The moves themselves are planned and checked before the first one, and a
file they replace is kept aside until the last one succeeded, so a failure half-way puts the old files back. Ctrl-C
during the final moves is held until they are done. Errors name the user's paths, never the staging folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from nc_probe.core.errors import InputError

#: Suffixes a folder output receives (an input file with one of them inside that folder could be overwritten, and a
#: sub-folder with such a name stands where a file will go).
DIR_SUFFIXES = {"out": (".json", ".csv", ".parquet", ".md", ".npz"), "plots": (".png", ".svg")}


@dataclass(frozen=True)
class Output:
    flag: str  # the option as the user typed it, for messages
    path: Path
    is_dir: bool


class OutputSet:
    """The outputs of one command. ``outputs``: flag -> path (None: not asked for); ``dirs``: the flags whose
    path is a folder; ``inputs``: paths the command reads (files or folders, or specs such as ``sample:ce`` and
    ``file.py:make``, see :func:`input_paths`), which no output may replace or write into."""

    def __init__(self, outputs: Mapping[str, Path | str | None], *, dirs=(), inputs=()):
        self.outputs = [Output(flag, Path(p), flag in dirs) for flag, p in outputs.items() if p is not None]
        self.inputs = input_paths(inputs)
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
                if _absolute(o.path).parent == _absolute(d.path) and o.path.suffix in _suffixes(d):
                    raise InputError(f"{o.flag} writes into the folder of {d.flag}, which writes files of that "
                                     "kind there", path=o.path, fix=f"put {o.flag} outside {d.path}")
        for o in self.outputs:
            for i in self.inputs:
                self._check_against_input(o, i)

    @staticmethod
    def _check_against_input(o: Output, i: Path) -> None:
        out, inp = _absolute(o.path), _absolute(i)
        clash = _same_file(o.path, i) or out == inp
        if not clash and o.is_dir and i.is_file():  # an input the folder output would overwrite
            clash = inp.parent == out and i.suffix in _suffixes(o)
        if clash:
            raise InputError(f"{o.flag} would overwrite an input of this run ({i})", path=o.path,
                             fix=f"write {o.flag} somewhere else")
        if i.is_dir() and inp in out.parents:  # writing into a data folder changes the data set
            raise InputError(f"{o.flag} would write into the folder {i}, an input of this run", path=o.path,
                             fix=f"write {o.flag} somewhere else")

    @staticmethod
    def _check_place(o: Output) -> None:
        p = o.path
        if p.exists() or p.is_symlink():
            if o.is_dir and not p.is_dir():
                raise InputError(f"{o.flag} names a file, not a folder", path=p, fix="pass a folder")
            if not o.is_dir and (p.is_dir() or not (p.is_file() or p.is_symlink())):
                raise InputError(f"{o.flag} names a folder or a special file, not a file", path=p,
                                 fix="pass a file path")
        parent = _existing_ancestor(p if o.is_dir else p.parent)
        if parent is None or not parent.is_dir():
            raise InputError(f"{o.flag} cannot be created: {parent} is not a folder", path=p,
                             fix="choose a path under an existing folder")
        if not _writable(parent) or (p.exists() and not os.access(p, os.W_OK)):
            raise InputError(f"{o.flag} is not writable", path=p, fix="choose a writable path")
        if o.is_dir and p.is_dir():  # a sub-folder named like a file this output writes (report.json/)
            for child in p.iterdir():
                if child.is_dir() and child.suffix in _suffixes(o):
                    raise InputError(f"{o.flag} holds a folder where it writes a file ({child.name})", path=p,
                                     fix=f"remove or rename {child}, or choose another folder")

    # ------------------------------------------------------------------ staged writing
    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Path]]:
        """Yield flag -> staging path; move every staged output into place when the block succeeds."""
        stages: list[tuple[Output, Path]] = []
        staged: dict[str, Path] = {}
        try:
            try:
                for o in self.outputs:
                    final = _absolute(o.path)
                    base = _existing_ancestor(final if o.is_dir else final.parent)
                    stage = Path(tempfile.mkdtemp(prefix=".nc-probe-staging-", dir=base))
                    stages.append((o, stage))
                    staged[o.flag] = stage / final.name
                    if o.is_dir:
                        staged[o.flag].mkdir()
                yield staged
                moves = [m for o in self.outputs for m in _planned_moves(o, staged[o.flag])]
                with _interrupts_held():
                    _commit(moves)
            except OSError as e:
                raise _named_for_user(e, stages) from None
        finally:
            for _, stage in stages:
                shutil.rmtree(stage, ignore_errors=True)


@dataclass(frozen=True)
class _Move:
    output: Output
    src: Path
    dst: Path


def _planned_moves(o: Output, staged: Path) -> list[_Move]:
    """Every file the staged output becomes, with its final path (nothing is moved yet)."""
    final = _absolute(o.path)
    if not staged.exists():
        return []  # an output the command had nothing to write to
    if not o.is_dir:
        # with its companions (a report's side file of matrices), written beside it in its own staging folder
        return [_Move(o, item, final.parent / item.name) for item in sorted(staged.parent.iterdir())]
    return [_Move(o, item, final / item.relative_to(staged)) for item in sorted(staged.rglob("*"))
            if not item.is_dir()]


def _commit(moves: list[_Move]) -> None:
    """Move the staged files into place, all or none: every target is checked first; a file being replaced is
    renamed aside and put back if a later move fails."""
    for m in moves:
        if m.dst.is_dir():
            raise InputError(f"{m.output.flag} would write the file {m.dst.name}, but a folder of that name exists",
                             path=m.dst, fix=f"remove or rename that folder, or write {m.output.flag} elsewhere")
        for parent in m.dst.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise InputError(f"{m.output.flag} needs {parent} to be a folder, but it is a file",
                                     path=m.output.path, fix=f"write {m.output.flag} elsewhere")
                break
    done: list[tuple[_Move, Path | None]] = []
    try:
        for m in moves:
            m.dst.parent.mkdir(parents=True, exist_ok=True)
            aside = None
            if m.dst.exists() or m.dst.is_symlink():
                aside = m.src.parent / f".replaced-{len(done)}-{m.dst.name}"
                os.replace(m.dst, aside)
            try:
                os.replace(m.src, m.dst)
            except BaseException:
                if aside is not None:
                    os.replace(aside, m.dst)
                raise
            done.append((m, aside))
    except BaseException:
        for m, aside in reversed(done):  # put back what was there before
            with contextlib.suppress(OSError):
                if aside is not None:
                    os.replace(aside, m.dst)
                else:
                    m.dst.unlink()
        raise


def _named_for_user(e: OSError, stages: list[tuple[Output, Path]]) -> BaseException:
    """An OSError about a staging path, told about the user's path instead."""
    name = str(e.filename or "")
    for o, stage in stages:
        if name.startswith(str(stage)):
            return InputError(f"{o.flag} could not be written ({e.strerror or type(e).__name__})", path=o.path,
                              fix="choose a writable path with free space")
    return e


def input_paths(inputs: Iterable) -> list[Path]:
    """The local files and folders behind the inputs of a run: paths as given, ``sample:NAME`` resolved, the file
    of ``file.py:function`` (an architecture or data factory) and the root of ``torchvision:CLASS:ROOT``. Specs that
    are not local files (a module path, a JSON object) are skipped."""
    out: list[Path] = []
    for p in inputs:
        if p is None:
            continue
        text = str(p)
        candidates = [text]
        if text.startswith("sample:"):
            from nc_probe.load.locate import resolve_input

            try:
                candidates = [str(resolve_input(text))]
            except InputError:
                continue
        elif text.startswith("torchvision:"):
            candidates = [text.split(":", 2)[-1]]
        elif ":" in text and not os.path.exists(text):
            candidates = [text.rpartition(":")[0]]  # file.py:function
        for c in candidates:
            if c and os.path.exists(c):
                out.append(Path(c))
    return out


def settings_inputs(settings) -> list:
    """The inputs a run's settings name: the data, the class map and an architecture file (a
    :class:`~nc_probe.core.settings.Settings`)."""
    return [settings.data.data, settings.data.class_map, settings.model.arch]


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder``, by trying (permission bits say nothing to root, nor about a
    read-only mount)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".nc-probe-check-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def _suffixes(o: Output) -> tuple[str, ...]:
    return DIR_SUFFIXES.get(o.flag.lstrip("-"), ())


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
