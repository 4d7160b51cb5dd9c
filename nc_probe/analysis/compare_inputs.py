"""``nc-probe compare`` from what the user names: checkpoints, feature files, report JSONs and samples, each
analyzed with the same settings, then lined up by :func:`~nc_probe.reports.compare.compare_reports` (with CKA where
inputs hold features of the same samples)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from nc_probe.analysis.inputs import input_kind, report_for
from nc_probe.core import distributed
from nc_probe.core.errors import InputError
from nc_probe.core.progress import phase, shows_progress, step
from nc_probe.core.settings import Settings, checkpoint_settings
from nc_probe.load.locate import input_label
from nc_probe.reports.compare import Comparison, compare_reports


def parse_specs(specs: Sequence[str]) -> dict[str, Path]:
    """``LABEL=PATH`` arguments (a bare PATH is labelled by its file stem, ``sample:NAME`` by NAME) -> ordered
    label -> path."""
    out: dict[str, Path] = {}
    for spec in specs:
        label, sep, path = str(spec).partition("=")
        if not sep or not label or Path(spec).exists():
            label, path = input_label(spec), spec
        if not path:
            raise InputError(f"{spec!r} names no file", fix="write LABEL=PATH, e.g. ce=runs/ce/features.safetensors")
        if label in out:
            raise InputError(f"label {label!r} is given twice", fix="give each input its own LABEL=")
        out[label] = Path(path)
    return out


@shows_progress
def compare_inputs(specs: Mapping[str, object] | Sequence[str], settings: Settings | None = None, *,
                   cka: bool = True, unbiased_cka: bool = False, progress: bool = False, **shortcuts) -> Comparison:
    """Compare checkpoints, feature files, report JSONs and samples (label -> path, or ``LABEL=PATH`` strings).

    Every input is analyzed with the same ``settings`` (or their fields as keywords); checkpoints keep their
    features in a temporary file for CKA; report JSONs carry no features and join the table but not the CKA.
    """
    settings = checkpoint_settings(settings, **shortcuts)
    paths = parse_specs(specs) if not isinstance(specs, Mapping) else {k: Path(str(v)) for k, v in specs.items()}
    if len(paths) < 2:
        raise InputError(f"compare needs at least 2 inputs, got {len(paths)}", fix="pass LABEL=PATH LABEL=PATH")
    reports, features = {}, {}
    if distributed.active():
        cka = False  # a torchrun rank holds only its share of the features; CKA needs all of them in one place
    with tempfile.TemporaryDirectory(prefix="nc-probe-compare-") as tmp:
        for i, (label, path) in enumerate(paths.items()):
            kind = input_kind(path)
            keep = Path(tmp) / f"{i}.safetensors" if kind == "checkpoint" and cka else None
            with phase(f"input {i + 1}/{len(paths)}: {label}"):
                reports[label] = report_for(path, settings, save_features=keep, progress=progress)
            if keep is not None and reports[label].inputs.get("features_file"):
                reports[label].inputs["features_file"] = None  # removed when compare returns
            if cka and kind == "features":
                features[label] = path
            elif keep is not None and keep.exists():
                features[label] = keep
        step("CKA and deltas" if cka else "deltas")
        return compare_reports(reports, features=features if cka else None,
                               chunk_rows=settings.metrics.chunk_rows, unbiased_cka=unbiased_cka)
