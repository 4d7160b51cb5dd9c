"""What a path given on the command line is (a report JSON, a feature file, or a checkpoint) and how to turn it
into a Report. Shared by analyze, compare and gate, so every command accepts the same inputs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import InputError
from .report import Report

FEATURE_NAMES = {"features", "H"}
LABEL_NAMES = {"labels", "y"}
SAMPLE_CHECKPOINT = Path(__file__).resolve().parent.parent / "sample_checkpoints" / "ce.pt"


def input_kind(path) -> str:
    """``"report"``, ``"features"`` or ``"checkpoint"``, from the suffix and, where needed, the stored names."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file", path=p, fix="check the path")
    suffix = p.suffix.lower()
    if suffix == ".json":
        return "report"
    if suffix == ".npz":
        return "features"
    if p.is_dir():
        raise InputError("is a folder", path=p, fix="pass a checkpoint, a feature file or a report JSON")
    if suffix in (".safetensors", ".ncf", ".st"):
        names = _safetensors_names(p)
        # An unreadable header goes to the store reader, whose error says precisely what is wrong.
        return "features" if names is None or _has_feature_names(names) else "checkpoint"
    if suffix in (".pt", ".pth"):
        return "features" if _torch_feature_dict(p) else "checkpoint"
    return "checkpoint"


def _safetensors_names(p: Path) -> set[str] | None:
    try:
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(n, 100 << 20)))
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, MemoryError):
        return None
    return set(header) if isinstance(header, dict) else None


def _has_feature_names(names) -> bool:
    return bool(FEATURE_NAMES & set(names)) and bool(LABEL_NAMES & set(names))


def _torch_feature_dict(p: Path) -> bool:
    import torch

    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - anything unreadable here is a checkpoint question for the loader
        return False
    return isinstance(obj, dict) and _has_feature_names(obj.keys())


def report_for(path, *, checkpoint_options: dict | None = None, **settings) -> Report:
    """A Report for any input: a report JSON is read back, a feature file analyzed, a checkpoint run on its data."""
    kind = input_kind(path)
    if kind == "report":
        return Report.load(path)
    if kind == "features":
        from .analysis import analyze_file

        return analyze_file(path, **settings)
    try:
        from .pipeline import analyze_checkpoint
    except ImportError:
        raise InputError("is not a feature file, and checkpoint analysis is not available in this build",
                         path=path, fix="pass a .safetensors/.npz/.pt feature file or a report JSON") from None
    return analyze_checkpoint(path, **(checkpoint_options or {}), **settings)
