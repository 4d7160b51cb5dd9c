"""Training trajectories (``nc-probe trajectory``): an ordered series of checkpoints, each analysed on its data (one
at a time, so memory does not grow with the series), every metric against the epoch.

Order: the epoch in a checkpoint's metadata (``"epoch"`` of its ``nc_probe`` dict), else a number in its file name
(``epoch_012.pt``, ``ce_epoch20.pt``, ``ep5.ckpt``, ``step-300.pt``), else the order given. Inputs: checkpoint
paths, folders (their checkpoint files), globs (``runs/*/last.ckpt``) and shipped samples (``sample:ce_epoch*``);
or one folder of per-epoch report JSONs written by a training callback (:mod:`nc_probe.analysis.report_series`).

Resuming: with an output folder, each checkpoint's report is written to ``reports/<label>.json`` as soon as it is
done, with a key made of the checkpoint's sha256, a fingerprint of the data's contents (:func:`data_fingerprint`)
and every setting that changes a number; a later run with the same key reads the report back instead of analysing
the checkpoint again, when the kept report is well formed and names the same checkpoint sha256. Anything else (another
key, a malformed or unreadable file) is analysed again. Data without a fingerprint (``torchvision:``, a
``module:function``, a Dataset) is analysed again every time: nothing says its contents did not change.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from nc_probe.core.errors import InputError
from nc_probe.core.files import file_sha256, json_safe, read_json
from nc_probe.core.progress import step
from nc_probe.core.settings import Settings, checkpoint_settings
from nc_probe.core.text import quoted
from nc_probe.reports.report import Report

TRAJECTORY_SCHEMA = "trajectory-1.0"
EPOCH_IN_NAME = re.compile(r"(?:epoch|ep|step|iter|checkpoint|ckpt|e)[_=\-]?(\d+)", re.IGNORECASE)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".pt2", ".bin")
# settings that do not change any number of a report (where and how fast it runs): left out of the resume key
RUN_ONLY = {"device", "batch_size", "workers", "memory_budget", "chunk_rows", "spill_threshold", "amp_note"}
MAX_EPOCH = 1e15  # an epoch (or step) beyond this, or not finite, is not one: the file name or the order decides
HASHED_DATA_BYTES = 64 * 2**20  # data files up to this size are fingerprinted by their sha256, larger ones by stat


@dataclass
class Point:
    """One checkpoint of the series: its label, path, epoch (None when unknown), where the epoch came from, and its
    reports by split (one split, or two with ``--split train,test``)."""

    label: str
    path: str
    epoch: float | None
    epoch_from: str
    reports: dict[str, Report] = field(default_factory=dict)
    reused: bool = False


@dataclass
class Trajectory:
    """Reports of a series of checkpoints, in epoch order: ``points`` (one :class:`Point` each), ``settings`` (the
    record: eps2, splits, data; typed: :attr:`settings_typed`), ``notes``; :meth:`tidy` is the long table."""

    points: list[Point]
    settings: dict
    notes: list[str] = field(default_factory=list)  # e.g. why kept reports were not reused

    @property
    def splits(self) -> list[str]:
        return list(self.points[0].reports) if self.points else []

    @property
    def settings_typed(self) -> Settings:
        """:attr:`settings` (eps2, splits, data) as the typed :class:`~nc_probe.core.settings.Settings` (the splits
        are not a setting; see :meth:`Settings.from_dict`)."""
        return Settings.from_dict(self.settings)

    def tidy(self) -> pd.DataFrame:
        """Long format: one row per (checkpoint, epoch, split, metric, value) for every scalar metric."""
        rows = [(p.label, p.epoch, split, key, value) for p in self.points for split, r in p.reports.items()
                for key, value in r.metrics.items()]
        return pd.DataFrame(rows, columns=["checkpoint", "epoch", "split", "metric", "value"])

    def values(self, key: str, split: str | None = None) -> list:
        split = split or self.splits[0]
        return [p.reports[split].metrics.get(key) if split in p.reports else None for p in self.points]

    def to_dict(self) -> dict:
        return json_safe({"kind": "trajectory", "schema_version": TRAJECTORY_SCHEMA, "settings": self.settings,
                          "points": [{"label": p.label, "path": p.path, "epoch": p.epoch, "epoch_from": p.epoch_from,
                                      "reused": p.reused,
                                      "metrics": {s: r.metrics for s, r in p.reports.items()}}
                                     for p in self.points], "notes": self.notes})

    def save(self, path) -> Path:
        from nc_probe.core.files import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, allow_nan=False))


# ----------------------------------------------------------------------------------------------- the series
def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Checkpoint paths (or ``sample:NAME``) from paths, folders, globs and sample patterns, without repeats."""
    from nc_probe.load import samples
    from nc_probe.load.checkpoint import is_checkpoint
    from nc_probe.load.hf import is_hf_folder

    out: list[str] = []
    for item in inputs:
        text = str(item)
        if text.startswith("sample:"):
            names = [n for n in samples.sample_names() if fnmatch.fnmatchcase(n, text[len("sample:"):])]
            if not names:
                raise InputError(f"{text} matches no shipped sample",
                                 fix=f"pick from {', '.join(samples.sample_names())}")
            found = [f"sample:{n}" for n in names]
        elif Path(text).is_dir() and is_hf_folder(text):
            found = [text]
        elif Path(text).is_dir():  # checkpoint files, or save_pretrained folders (a Trainer's checkpoint-500/)
            found = sorted((str(p) for p in Path(text).iterdir()
                            if (p.suffix.lower() in CHECKPOINT_SUFFIXES or p.is_dir()) and is_checkpoint(p)),
                           key=_natural)
            if not found and _holds_reports(text):  # per-epoch reports a training callback wrote: read, not run
                found = [text]
            if not found:
                raise InputError("holds no checkpoint files", path=text,
                                 fix=f"point at a folder of {', '.join(CHECKPOINT_SUFFIXES)} checkpoints")
        elif any(ch in text for ch in "*?["):
            found = sorted(glob.glob(text))
            if not found:
                raise InputError(f"the pattern {text!r} matches no file", fix="check the pattern (quote it in the "
                                 "shell so nc-probe expands it)")
        else:
            found = [text]
        out += [f for f in found if f not in out]
    if not out:
        raise InputError("no checkpoints given", fix="pass checkpoints, a folder, a glob or sample:ce_epoch*")
    return out


def _holds_reports(path: str) -> bool:
    """A folder of report JSONs (:mod:`nc_probe.analysis.report_series`) rather than of checkpoints."""
    from nc_probe.analysis.report_series import report_files

    return Path(path).is_dir() and bool(report_files(path))


def _natural(path: str) -> list:
    """A sort key that orders numbers in names by value: checkpoint-500 before checkpoint-1000."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", Path(path).name)]


def epoch_of(metadata: dict, path: str) -> tuple[float | None, str]:
    """``(epoch, where it came from)``: the metadata's ``epoch``, else a number in the file name, else unknown. An
    epoch that is not a finite number of at most :data:`MAX_EPOCH` (``10**400``, NaN) is not one."""
    value = _epoch(metadata.get("epoch"))
    if value is not None:
        return value, "metadata"
    match = EPOCH_IN_NAME.findall(Path(str(path)).stem)
    value = _epoch(int(match[-1][:20])) if match else None
    if value is not None:
        return value, "file name"
    return None, "order given"


def _epoch(value) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) and abs(f) <= MAX_EPOCH else None


def label_of(path: str, taken: set[str]) -> str:
    base = str(path).removeprefix("sample:") if str(path).startswith("sample:") else Path(path).stem
    label, k = base, 2
    while label in taken:  # runs/a/last.ckpt and runs/b/last.ckpt
        label, k = f"{base}-{k}", k + 1
    taken.add(label)
    return label


def resume_key(sha256: str, settings: Settings, splits: Sequence[str], data: str | None = None) -> str:
    """The checkpoint's digest, the data's fingerprint (:func:`data_fingerprint`) and every setting that changes a
    number, hashed."""
    import dataclasses

    record = {group: {k: v for k, v in dataclasses.asdict(getattr(settings, group)).items() if k not in RUN_ONLY}
              for group in ("metrics", "data", "extraction", "model")}
    text = json.dumps({"sha256": sha256, "settings": record, "splits": list(splits), "data": data}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def data_fingerprint(spec) -> str | None:
    """What the data's contents are, for the resume key: the sha256 of a data file (of the shipped digits for
    ``sample:digits``) up to :data:`HASHED_DATA_BYTES`; the size and modification time of a larger file; the names,
    sizes and modification times of a folder's files. None for data nc-probe cannot fingerprint (``torchvision:``,
    ``module:function``, a Dataset), whose reports are then never reused."""
    if not isinstance(spec, (str, os.PathLike)):
        return None
    text = str(spec)
    if text.startswith("sample:"):
        from nc_probe.load.samples import DIGITS_PATH

        return _file_fingerprint(DIGITS_PATH) if text == "sample:digits" else None
    path = Path(text).expanduser()
    try:
        if path.is_dir():
            return _folder_fingerprint(path)
        return _file_fingerprint(path) if path.is_file() else None
    except OSError:
        return None


def _file_fingerprint(path: Path) -> str | None:
    try:
        st = path.stat()
        if st.st_size <= HASHED_DATA_BYTES:
            return "sha256:" + file_sha256(path)
    except OSError:
        return None
    return f"stat:{st.st_size}:{st.st_mtime_ns}"


def _folder_fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            st = os.stat(os.path.join(folder, name))
            rel = os.path.relpath(os.path.join(folder, name), root)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return "folder:" + h.hexdigest()


def run_trajectory(inputs: Sequence[str], settings: Settings | None = None, *, splits: Sequence[str] | None = None,
                   reports_dir=None, progress: Callable[[int, int, str, bool], None] | None = None,
                   **shortcuts) -> Trajectory:
    """Analyse every checkpoint of ``inputs`` and return them in epoch order (see the module docstring); those with
    an epoch in their file names are analysed in that order, the others where they were given. ``splits``: two
    splits (e.g. ``["train", "test"]``) for train and test curves with the test-collapse measures; ``reports_dir``:
    where each checkpoint's reports are kept for resuming; ``progress(i, n, label, reused)`` after each
    checkpoint."""
    from nc_probe.analysis.pipeline import analyze_checkpoint, load
    from nc_probe.analysis.splits import analyze_splits

    s = checkpoint_settings(settings, **shortcuts)
    paths = expand_inputs(inputs)
    if len(paths) == 1 and _holds_reports(paths[0]):
        return _report_trajectory(paths[0])
    taken: set[str] = set()
    labels = [label_of(path, taken) for path in paths]  # in the order given, whatever the order of analysis
    folder = Path(reports_dir) if reports_dir is not None else None
    fingerprints: dict[str, str | None] = {}
    done: list[tuple[int, Point]] = []
    notes: list[str] = []
    for i, k in enumerate(_analysis_order(paths)):
        path = paths[k]
        step(f"checkpoint {i + 1}/{len(paths)}: {labels[k]}")
        loaded = load(path, s.model)  # read safely once: its metadata gives the epoch, the analysis reuses it
        epoch, source = epoch_of(loaded.metadata, loaded.source)
        p = Point(labels[k], str(path), epoch, source)
        sha = file_sha256(loaded.source)
        spec = s.data.data if s.data.data is not None else loaded.metadata.get("data")
        if isinstance(spec, (str, os.PathLike)) and str(spec) not in fingerprints:
            fingerprints[str(spec)] = data_fingerprint(spec)
        fingerprint = fingerprints.get(str(spec)) if isinstance(spec, (str, os.PathLike)) else None
        key = resume_key(sha, s, splits or [], fingerprint) if fingerprint is not None else None
        saved = folder / f"{p.label}.json" if folder is not None else None
        if saved is not None and key is not None:
            p.reports = _reuse(saved, key, sha, splits or [])
            p.reused = bool(p.reports)
        elif saved is not None and not notes:
            notes.append(f"kept reports are not reused: nc-probe cannot tell whether the data {quoted(str(spec))} "
                         "changed (only data files, folders and sample:digits have a fingerprint)")
        if not p.reports:
            if splits:
                p.reports = dict(analyze_splits(loaded, s, splits=splits).reports)
            else:
                report = analyze_checkpoint(loaded, s)
                p.reports = {str(report.inputs.get("split") or "data"): report}
            if saved is not None:
                _keep(saved, key, p.reports)
        del loaded  # one model at a time
        done.append((k, p))
        if progress is not None:
            progress(i + 1, len(paths), p.label, p.reused)
    if all(p.epoch is not None for _, p in done):  # equal epochs keep the order given
        done.sort(key=lambda kp: (kp[1].epoch or 0.0, kp[0]))
    else:
        done.sort(key=lambda kp: kp[0])
    return Trajectory([p for _, p in done], {"eps2": s.metrics.eps2, "splits": list(splits or []),
                                             "data": s.data.data}, notes)


def _report_trajectory(folder: str) -> Trajectory:
    """A folder of per-epoch reports (a training callback's) as a trajectory: read back, no model run."""
    from nc_probe.analysis.report_series import read_reports

    points = []
    for path, report, meta in read_reports(folder):
        epoch, source = epoch_of(meta, str(path))
        points.append(Point(path.stem, str(path), epoch, source, {str(report.inputs.get("split") or "data"): report},
                            reused=True))
    if all(p.epoch is not None for p in points):
        points.sort(key=lambda p: p.epoch or 0.0)  # stable: equal epochs keep the file order
    first = next(iter(points[0].reports.values()))
    return Trajectory(points, {"eps2": first.settings_typed.metrics.eps2, "splits": [], "data": str(folder)})


def _analysis_order(paths: list[str]) -> list[int]:
    """Indices of ``paths`` in the order to analyse them: those with an epoch in their file names sorted by it (in
    the places such paths were given), the others where they were given; so progress goes epoch1, epoch20,
    epoch100, not in the order of the names."""
    named = [epoch_of({}, path)[0] for path in paths]
    slots = [k for k, e in enumerate(named) if e is not None]
    order = list(range(len(paths)))
    for slot, k in zip(slots, sorted(slots, key=lambda k: (named[k], k))):
        order[slot] = k
    return order


def _reuse(path: Path, key: str, sha256: str, splits: Sequence[str]) -> dict[str, Report]:
    """The reports kept at ``path`` when they were made with ``key``, hold one report per split asked for and name
    the checkpoint of ``sha256``; else nothing (the checkpoint is analysed again): a missing, unreadable or
    malformed file never stops the run."""
    try:
        data = read_json(path, "kept report", fix="")
        if not isinstance(data, dict) or data.get("resume_key") != key:
            return {}
        kept = data.get("reports")
        if not isinstance(kept, dict) or not all(isinstance(r, dict) for r in kept.values()):
            return {}
        reports = {split: Report.from_dict(r, path=path) for split, r in kept.items()}
    except InputError:
        return {}
    if (set(reports) != set(splits)) if splits else [str(r.inputs.get("split") or "data") for r in
                                                       reports.values()] != list(reports):
        return {}
    if any(r.inputs.get("sha256") != sha256 for r in reports.values()):
        return {}
    return reports


def _keep(path: Path, key: str | None, reports: dict[str, Report]) -> None:
    from nc_probe.core.files import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"kind": "trajectory-point", "resume_key": key,
            "reports": {split: r.to_dict() for split, r in reports.items()}}
    atomic_write_text(path, json.dumps(json_safe(data), indent=1, allow_nan=False))
