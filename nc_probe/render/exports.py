"""The report's tables (metrics, per class, class-pair angles, the most extreme pairs) as csv, parquet, markdown or
json, for files or stdout.

parquet needs ``pyarrow`` (an optional extra, a clear error without it); markdown uses ``DataFrame.to_markdown``
when ``tabulate`` is installed and a small built-in writer otherwise, so neither is a dependency.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
from pathlib import Path

import pandas as pd

from nc_probe.core.errors import InputError, parameter_name
from nc_probe.core.files import atomic_write_text, json_safe
from nc_probe.render.tables import angles_frame, metrics_frame, pairs_frame, per_class_frame, write_tables
from nc_probe.render.terminal import expected
from nc_probe.reports.report import Report

FORMATS = ("csv", "parquet", "markdown", "json")
SUFFIX = {"csv": "csv", "parquet": "parquet", "markdown": "md", "json": "json"}


def frames(report: Report) -> dict[str, pd.DataFrame]:
    """``metrics`` (with the 'collapsed / MCR^2' expectation), ``per_class``, ``angles`` (every pair of the angle
    matrices, empty when the report did not keep them) and ``pairs`` (the most extreme pairs of each class-pair
    quantity, by name) tables."""
    metrics = metrics_frame(report)
    C = report.inputs.get("num_classes")
    metrics.insert(2, "collapsed / MCR^2", [expected(k, C) for k in metrics["metric"]])
    return {"metrics": metrics, "per_class": per_class_frame(report), "angles": angles_frame(report),
            "pairs": pairs_frame(report)}


def check_format(fmt: str) -> str:
    fmt = str(fmt).lower()
    if fmt == "md":
        fmt = "markdown"
    if fmt not in FORMATS:
        raise InputError(f"{{fmt}} {fmt!r} is not one of {', '.join(FORMATS)}", fix="pick one of those")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise InputError("{fmt=parquet} needs pyarrow, which is not installed",
                         fix="install it (pip install pyarrow), or use {fmt=csv}")
    return fmt


def frame_text(df: pd.DataFrame, fmt: str) -> str:
    """One table as text in a text format (csv, markdown, json records)."""
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "markdown":
        return markdown_table(df) + "\n"
    if fmt == "json":
        return json.dumps(json_safe(df.astype(object).where(df.notna(), None).to_dict(orient="records")),
                          indent=2, allow_nan=False) + "\n"
    raise InputError(f"{{fmt={fmt}}} is not a text format", fix="write it to a folder with {out}")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table: ``DataFrame.to_markdown`` when tabulate is installed, else written here."""
    if importlib.util.find_spec("tabulate") is not None:
        return df.to_markdown(index=False)
    cols = [str(c) for c in df.columns]
    rows = [[_md_cell(v) for v in row] for row in df.itertuples(index=False)]
    right = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(cols), rule] + [line(r) for r in rows])


def _md_cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def report_text(report: Report, fmt: str) -> str:
    """All the tables in one text document (markdown: headed sections; csv: blank-line separated; json: one
    object of record lists)."""
    fmt = check_format(fmt)
    tabs = frames(report)
    if fmt == "json":
        return json.dumps({k: json.loads(frame_text(v, "json")) for k, v in tabs.items()}, indent=2) + "\n"
    if fmt == "markdown":
        return "\n".join(f"## {name}\n\n{frame_text(df, fmt)}" for name, df in tabs.items())
    if fmt == "csv":
        return "\n".join(f"# {name}\n{frame_text(df, fmt)}" for name, df in tabs.items())
    raise InputError("{fmt=parquet} is binary", fix="write it to a folder with {out=DIR}")


def write_exports(report: Report, out_dir, fmt: str = "csv") -> list[Path]:
    """Write report.json (and its side file of large matrices) and the metrics, per_class, angles and pairs tables
    in ``fmt`` into ``out_dir`` (atomically)."""
    fmt = check_format(fmt)
    out = Path(out_dir)
    written = [report.save(out / "report.json")]
    for name, df in frames(report).items():
        path = out / f"{name}.{SUFFIX[fmt]}"
        if fmt == "parquet":
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            written.append(atomic_write_text(path, buf.getvalue()))
        else:
            written.append(atomic_write_text(path, frame_text(df, fmt)))
    return written


def check_output_options(fmt: str | None, out) -> str | None:
    """Validate ``--format`` before any work: a known format, pyarrow for parquet, and a folder for parquet."""
    if fmt is None:
        return None
    fmt = check_format(fmt)
    if fmt == "parquet" and out is None:
        raise InputError("{fmt=parquet} writes files, not text", fix="add {out=DIR}")
    return fmt


def write_outputs(report: Report, *, out=None, fmt: str | None = None, plots=None, html=None,
                  spell=parameter_name) -> str | None:
    """The file outputs of ``analyze``: tables into ``out`` (csv unless ``fmt``), plots (PNG and SVG) into
    ``plots``, an HTML page at ``html``. Returns the tables as text when ``fmt`` is given without ``out`` (for
    stdout), else None."""
    fmt = check_output_options(fmt, out)
    if out is not None:
        if fmt is None:
            write_tables(report, out)  # the original --out layout, unchanged
        else:
            write_exports(report, out, fmt)
    if plots is not None or html is not None:
        from nc_probe.render.html import write_html
        from nc_probe.render.plots import report_figures, write_visuals

        write_visuals(report, plots=plots, html=html, figures_of=report_figures,
                      write_page=lambda r, path, figures: write_html(r, path, figures, spell))
    if fmt is not None and out is None:
        return report_text(report, fmt)
    return None
