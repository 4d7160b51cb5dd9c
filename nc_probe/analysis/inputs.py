"""What an input named on the command line is (a report JSON, a feature file, a checkpoint, or a shipped sample
``sample:NAME``) and how to turn it into a Report. Shared by analyze, compare and gate, so every command accepts
the same inputs."""

from __future__ import annotations

from nc_probe.core.settings import Settings
from nc_probe.load.locate import resolve_input
from nc_probe.reports.report import Report


def input_kind(path) -> str:
    """``"report"`` (a .json), ``"checkpoint"`` (a model of any format) or ``"features"`` (everything else: the
    feature-file reader then says precisely what is wrong with a file that is neither)."""
    from nc_probe.load.checkpoint import is_checkpoint

    p = resolve_input(path)
    if p.suffix.lower() == ".json":
        return "report"
    return "checkpoint" if is_checkpoint(p) else "features"


def report_for(path, settings: Settings | None = None, *, save_features=None, progress: bool = False) -> Report:
    """A Report for any input: a report JSON is read back, a feature file analyzed with ``settings.metrics``, a
    checkpoint run on its data with all of ``settings``."""
    settings = settings or Settings()
    p = resolve_input(path)
    kind = input_kind(p)
    if kind == "report":
        return Report.load(p)
    if kind == "features":
        from nc_probe.analysis.features import analyze_file

        return analyze_file(p, settings.metrics)
    from nc_probe.analysis.pipeline import analyze_checkpoint

    return analyze_checkpoint(p, settings, save_features=save_features, progress=progress)
