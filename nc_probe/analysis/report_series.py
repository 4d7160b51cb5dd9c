"""A folder of per-epoch report JSONs as a trajectory: what the training callbacks (:mod:`nc_probe.training`) write,
read by ``nc-probe trajectory FOLDER`` and rendered as a checkpoint series is. No model runs: each report is read
back (checked as any report is), its epoch from ``inputs.epoch`` (else its metadata's, else a number in its file
name, else the file order)."""

from __future__ import annotations

import json
from pathlib import Path

from nc_probe.core.errors import InputError
from nc_probe.reports.report import Report


def report_files(folder) -> list[Path]:
    """The report JSONs directly in ``folder`` (files whose top level has ``metrics`` and ``inputs``), in natural
    name order; [] when it is not a folder or holds none."""
    root = Path(folder)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.glob("*.json"), key=lambda p: _natural(p.name)):
        try:
            with open(path, encoding="utf-8") as f:
                head = json.loads(f.read(64 << 20))
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(head, dict) and isinstance(head.get("metrics"), dict) and isinstance(head.get("inputs"), dict):
            out.append(path)
    return out


def _natural(name: str) -> list:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_reports(folder) -> list[tuple[Path, Report, dict]]:
    """``(path, report, {"epoch": ...})`` of every report in ``folder`` in name order; the epoch from
    ``inputs.epoch``, else the metadata's (the trajectory falls back to the file name, then the order)."""
    files = report_files(folder)
    if not files:
        raise InputError("holds no report JSONs", path=str(folder),
                         fix="point at the folder a training callback wrote (epoch_*.json)")
    out = []
    for path in files:
        report = Report.load(path)
        epoch = report.inputs.get("epoch")
        if epoch is None and isinstance(report.inputs.get("metadata"), dict):
            epoch = report.inputs["metadata"].get("epoch")
        out.append((path, report, {"epoch": epoch}))
    return out
