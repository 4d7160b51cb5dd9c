"""What a path given on the command line is (a report JSON, a feature file, or a checkpoint) and how to turn it
into a Report. Shared by analyze, compare and gate, so every command accepts the same inputs."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .report import Report

SAMPLE_CHECKPOINT = Path(__file__).resolve().parent.parent / "sample_checkpoints" / "ce.pt"


def input_kind(path) -> str:
    """``"report"`` (a .json), ``"checkpoint"`` (a model of any format) or ``"features"`` (everything else: the
    feature-file reader then says precisely what is wrong with a file that is neither)."""
    from .loading import is_checkpoint

    p = Path(path)
    if not p.exists():
        raise InputError("no such file", path=p, fix="check the path")
    if p.is_dir():
        raise InputError("is a folder", path=p, fix="pass a checkpoint, a feature file or a report JSON")
    if p.suffix.lower() == ".json":
        return "report"
    return "checkpoint" if is_checkpoint(p) else "features"


def report_for(path, *, checkpoint_options: dict | None = None, **settings) -> Report:
    """A Report for any input: a report JSON is read back, a feature file analyzed, a checkpoint run on its data."""
    kind = input_kind(path)
    if kind == "report":
        return Report.load(path)
    if kind == "features":
        from .analysis import analyze_file

        return analyze_file(path, **settings)
    from .pipeline import analyze_checkpoint

    return analyze_checkpoint(path, **(checkpoint_options or {}), **settings)
