"""Figures to files: PNG and SVG bytes rendered once per figure (no timestamps, so the same report gives the same
bytes), data URIs for the HTML pages, and folders of plots written atomically; plus the tick labels applied at
rendering time."""

from __future__ import annotations

import base64
import io
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)  # headless; a no-op when pyplot already runs another backend

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatter  # noqa: E402

from nc_probe.render.pair_plots import DPI  # noqa: E402


class PlainLogFormatter(LogFormatter):
    """Tick labels of a log axis that spans less than a decade: plain numbers (0.2, 0.5, 2.03), not 2.03x10^0.
    matplotlib's LogFormatter still decides which minor ticks get a label."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:.3g}"


def plain_log_ticks(fig) -> None:
    """Every log axis of ``fig`` whose view spans less than one decade gets plain tick labels
    (:class:`PlainLogFormatter`); wider ones keep matplotlib's powers of ten."""
    for ax in fig.axes:
        for axis, limits in ((ax.xaxis, ax.get_xlim), (ax.yaxis, ax.get_ylim)):
            if axis.get_scale() != "log":
                continue
            lo, hi = sorted(limits())
            if lo > 0 and math.log10(hi / lo) < 1:
                axis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
                axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))



# ---------------------------------------------------------------------------------------------- output
def figure_bytes(fig: Figure, fmt: str = "png") -> bytes:
    """The figure as PNG or SVG bytes. Rendered once per format and kept on the figure (``--plots`` and ``--html``
    share the PNG), so change a figure before its first rendering, not after."""
    cache = fig.__dict__.setdefault("_nc_probe_bytes", {})
    if not cache:
        plain_log_ticks(fig)
    if fmt not in cache:
        buf = io.BytesIO()
        with warnings.catch_warnings():
            # class and layer names come from files: a control character in one has no glyph, and matplotlib's
            # warning would print it raw
            warnings.filterwarnings("ignore", message="Glyph .* missing from")
            fig.savefig(buf, format=fmt, dpi=DPI if fmt == "png" else None, metadata=_metadata(fmt))
        cache[fmt] = buf.getvalue()
    return cache[fmt]


def _metadata(fmt: str) -> dict | None:
    # No timestamps or version strings in the files, so the same report gives the same bytes.
    if fmt == "svg":
        return {"Date": None, "Creator": None}
    if fmt == "png":
        return {"Software": None}
    return None


def figure_data_uri(fig: Figure) -> str:
    return "data:image/png;base64," + base64.b64encode(figure_bytes(fig, "png")).decode("ascii")


def write_visuals(subject, *, plots=None, html=None, figures_of, write_page) -> None:
    """Render ``figures_of(subject)`` once and write them as PNG+SVG into ``plots`` and/or embedded in the
    self-contained page ``write_page(subject, html, figures)``; nothing when both paths are None."""
    if plots is None and html is None:
        return
    figures = figures_of(subject)
    if plots is not None:
        save_figures(figures, plots)
    if html is not None:
        write_page(subject, html, figures)


def save_figures(figures: dict[str, Figure], out_dir, formats=("png", "svg")) -> list[Path]:
    """Write each figure as ``NAME.png`` and ``NAME.svg`` (atomically) into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            tmp = out / f".{name}.{fmt}.tmp"
            try:
                tmp.write_bytes(figure_bytes(fig, fmt))
                tmp.replace(path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            written.append(path)
    return written


