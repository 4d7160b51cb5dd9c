"""Training trajectories (``nc-probe trajectory``): an ordered series of checkpoints, each analysed on its data (one
at a time, so memory does not grow with the series), every metric against the epoch.

Order: the epoch in a checkpoint's metadata (``"epoch"`` of its ``nc_probe`` dict), else a number in its file name
(``epoch_012.pt``, ``ce_epoch20.pt``, ``ep5.ckpt``, ``step-300.pt``), else the order given. Inputs: checkpoint
paths, folders (their checkpoint files), globs (``runs/*/last.ckpt``) and shipped samples (``sample:ce_epoch*``).

Resuming: with an output folder, each checkpoint's report is written to ``reports/<label>.json`` as soon as it is
done, with a key made of the checkpoint's sha256 and every setting that changes a number; a later run with the same
key reads the report back instead of analysing the checkpoint again.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import InputError
from .files import file_sha256, json_safe
from .report import Report
from .settings import Settings, checkpoint_settings

TRAJECTORY_SCHEMA = "trajectory-1.0"
EPOCH_IN_NAME = re.compile(r"(?:epoch|ep|step|iter|e)[_=\-]?(\d+)", re.IGNORECASE)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".pt2", ".bin")
# settings that do not change any number of a report (where and how fast it runs): left out of the resume key
RUN_ONLY = {"device", "batch_size", "workers", "memory_budget", "chunk_rows", "spill_threshold", "amp_note"}


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
    points: list[Point]
    settings: dict

    @property
    def splits(self) -> list[str]:
        return list(self.points[0].reports) if self.points else []

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
                                     for p in self.points]})

    def save(self, path) -> Path:
        from .files import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, allow_nan=False))


# ----------------------------------------------------------------------------------------------- the series
def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Checkpoint paths (or ``sample:NAME``) from paths, folders, globs and sample patterns, without repeats."""
    from . import samples
    from .loading import is_checkpoint

    out: list[str] = []
    for item in inputs:
        text = str(item)
        if text.startswith("sample:"):
            names = [n for n in samples.sample_names() if fnmatch.fnmatchcase(n, text[len("sample:"):])]
            if not names:
                raise InputError(f"{text} matches no shipped sample",
                                 fix=f"pick from {', '.join(samples.sample_names())}")
            found = [f"sample:{n}" for n in names]
        elif Path(text).is_dir():
            found = sorted(str(p) for p in Path(text).iterdir()
                           if p.suffix.lower() in CHECKPOINT_SUFFIXES and is_checkpoint(p))
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


def epoch_of(metadata: dict, path: str) -> tuple[float | None, str]:
    """``(epoch, where it came from)``: the metadata's ``epoch``, else a number in the file name, else unknown."""
    value = metadata.get("epoch")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), "metadata"
    match = EPOCH_IN_NAME.findall(Path(str(path)).stem)
    if match:
        return float(match[-1]), "file name"
    return None, "order given"


def label_of(path: str, taken: set[str]) -> str:
    base = str(path).removeprefix("sample:") if str(path).startswith("sample:") else Path(path).stem
    label, k = base, 2
    while label in taken:  # runs/a/last.ckpt and runs/b/last.ckpt
        label, k = f"{base}-{k}", k + 1
    taken.add(label)
    return label


def resume_key(sha256: str, settings: Settings, splits: Sequence[str]) -> str:
    """The checkpoint's digest and every setting that changes a number, hashed."""
    import dataclasses

    record = {group: {k: v for k, v in dataclasses.asdict(getattr(settings, group)).items() if k not in RUN_ONLY}
              for group in ("metrics", "data", "extraction", "model")}
    text = json.dumps({"sha256": sha256, "settings": record, "splits": list(splits)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_trajectory(inputs: Sequence[str], settings: Settings | None = None, *, splits: Sequence[str] | None = None,
                   reports_dir=None, progress: Callable[[int, int, str, bool], None] | None = None,
                   **shortcuts) -> Trajectory:
    """Analyse every checkpoint of ``inputs`` (in the order given) and return them in epoch order (see the module
    docstring). ``splits``: two splits
    (e.g. ``["train", "test"]``) for train and test curves with the test-collapse measures; ``reports_dir``: where
    each checkpoint's reports are kept for resuming; ``progress(i, n, label, reused)`` after each checkpoint."""
    from .pipeline import analyze_checkpoint, load
    from .splits import analyze_splits

    s = checkpoint_settings(settings, **shortcuts)
    paths = expand_inputs(inputs)
    taken: set[str] = set()
    folder = Path(reports_dir) if reports_dir is not None else None
    points = []
    for i, path in enumerate(paths):  # in the order given: the epochs are known only once each is loaded
        loaded = load(path, s.model)  # read safely once: its metadata gives the epoch, the analysis reuses it
        epoch, source = epoch_of(loaded.metadata, loaded.source)
        p = Point(label_of(path, taken), str(path), epoch, source)
        key = resume_key(file_sha256(loaded.source), s, splits or [])
        saved = folder / f"{p.label}.json" if folder is not None else None
        if saved is not None and saved.is_file():
            p.reports, p.reused = _reuse(saved, key), True
        if not p.reports:
            p.reused = False
            if splits:
                p.reports = dict(analyze_splits(loaded, s, splits=splits).reports)
            else:
                report = analyze_checkpoint(loaded, s)
                p.reports = {str(report.inputs.get("split") or "data"): report}
            if saved is not None:
                _keep(saved, key, p.reports)
        del loaded  # one model at a time
        points.append(p)
        if progress is not None:
            progress(i + 1, len(paths), p.label, p.reused)
    if all(p.epoch is not None for p in points):
        points.sort(key=lambda p: p.epoch or 0.0)  # stable: equal epochs keep the order given
    return Trajectory(points, {"eps2": s.metrics.eps2, "splits": list(splits or []), "data": s.data.data})


def _reuse(path: Path, key: str) -> dict[str, Report]:
    """The reports saved at ``path`` when they were made with ``key``, else nothing."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("resume_key") != key:
        return {}
    return {split: Report.from_dict(r) for split, r in data.get("reports", {}).items()}


def _keep(path: Path, key: str, reports: dict[str, Report]) -> None:
    from .files import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"kind": "trajectory-point", "resume_key": key,
            "reports": {split: r.to_dict() for split, r in reports.items()}}
    atomic_write_text(path, json.dumps(json_safe(data), indent=1, allow_nan=False))
