"""Progress on stderr for every phase of a run (nc_probe.core.progress): shown on a terminal, never with -q, never
when stderr is not a terminal, never on a torchrun rank other than 0, never from worker threads."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading

import pytest
from rich.console import Console

from nc_probe.analysis.pipeline import analyze_checkpoint
from nc_probe.core import progress
from nc_probe.core.progress import bar, phase, shown, step

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# The phases an analysis of sample:ce goes through. Its statistics come from the extraction (no pass 1), and it
# writes outputs only from the CLI.
# On the CPU the spectra of pass 1's moments come before pass 2 (not on a thread beside it).
CHECKPOINT_PHASES = ["loading the model", "opening the data", "extracting: ce.pt on sample:digits", "metrics",
                     "metrics: collapse metrics", "metrics: subspace spectra", "metrics: PCA, probes",
                     "metrics: pass 2: predictions, NC4"]


def terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=200, color_system=None), buf


def plain(buf: io.StringIO) -> str:
    """What was drawn, control sequences removed (each redraw of a row starts with a carriage return)."""
    return ANSI.sub("", buf.getvalue()).replace("\r", "\n")


def rows(buf: io.StringIO) -> list[str]:
    """The rows drawn, spinner and elapsed time cut off, in the order they first appeared (every redraw draws every
    open row again)."""
    out: list[str] = []
    for line in plain(buf).splitlines():
        text = re.sub(r"\s+\d+:\d\d:\d\d.*$", "", line[1:]).strip()  # spinner glyph first, elapsed time last
        if text and text not in out:
            out.append(text)
    return out


def test_phases_and_steps_are_drawn_in_order_and_vanish():
    console, buf = terminal()
    with shown(console=console):
        assert progress.active()
        with phase("loading"):
            pass
        with phase("metrics"):
            step("pass 1")
            with phase("inner"):
                step("deeper")
            step("pass 2")
        step("a row of its own")
    assert not progress.active()
    assert rows(buf) == ["loading", "metrics", "metrics: pass 1", "inner", "inner: deeper", "metrics: pass 2",
                         "a row of its own"]
    tail = buf.getvalue().rpartition("\x1b[?25h")[2]  # after the cursor is given back,
    assert tail == "\r\x1b[1A\x1b[2K"  # the last row drawn is erased: nothing is left on the terminal


def test_a_phase_row_sits_under_its_parent_while_it_runs():
    console, buf = terminal()
    with shown(console=console), phase("outer"), phase("inner"):
        drawn = plain(buf)
    assert re.search(r"outer\s+\d:\d\d:\d\d\s*\n.*inner", drawn)


def test_the_bar_counts_samples():
    console, buf = terminal()
    with shown(console=console):
        b = bar(1000, "extracting")
        assert b is not None
        b(250, 1000)
        console.file.flush()
        b.display.progress.refresh()
        b.close()
    text = plain(buf)
    assert "0/1,000" in text and "250/1,000" in text and "samples/s" in text


@pytest.mark.parametrize("case", ["off", "not a terminal", "other rank"])
def test_nothing_is_drawn(case, monkeypatch):
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=case != "not a terminal")
    if case == "other rank":
        monkeypatch.setenv("RANK", "1")
    with shown(case != "off", console=console):
        assert not progress.active()
        with phase("loading"):
            step("x")
        assert bar(10, "extracting") is None
    assert buf.getvalue() == ""


def test_worker_threads_draw_nothing_and_an_inner_display_defers_to_the_outer():
    console, buf = terminal()
    other, other_buf = terminal()
    seen = []
    with shown(console=console):
        t = threading.Thread(target=lambda: (seen.append(progress.active()), step("from a thread")))
        t.start()
        t.join()
        with shown(console=other), phase("nested"):
            pass
    assert seen == [False]
    assert "from a thread" not in plain(buf) and "nested" in plain(buf)
    assert other_buf.getvalue() == ""


def test_the_start_up_display_is_taken_over_by_the_first_shown_block():
    console, buf = terminal()
    with shown(console=console, handover=True):
        step("starting")
        with shown(console=console):  # the command's own: takes the display over, the start-up's row goes
            before = len(buf.getvalue())
            with phase("metrics"):
                drawn = ANSI.sub("", buf.getvalue()[before:])  # what was drawn since the take-over
            assert progress.active()
        assert not progress.active()  # closed with the block that took it over: the results print on a clean line
        with phase("after"):
            pass
        with shown(console=console), phase("a new display"):
            pass
    assert "metrics" in drawn and "starting" not in drawn
    assert "after" not in plain(buf) and "a new display" in plain(buf)


def test_abandon_takes_the_display_down():
    console, buf = terminal()
    with shown(console=console), phase("importing"):
        progress.abandon()
        assert "\x1b[?25h" in buf.getvalue() and buf.getvalue().endswith("\x1b[2K")


def test_analyze_checkpoint_shows_each_phase(monkeypatch):
    console, buf = terminal()
    monkeypatch.setattr(progress, "stderr_console", lambda: console)
    report = analyze_checkpoint("sample:ce", progress=True)
    drawn = rows(buf)
    assert [r for r in drawn if r in CHECKPOINT_PHASES or r.startswith("extracting")][:2] == CHECKPOINT_PHASES[:2]
    for name in CHECKPOINT_PHASES:
        assert any(r == name or r.startswith(name + " ") for r in drawn), (name, drawn)
    assert report.inputs["num_samples"] == 1347


def test_analyze_checkpoint_without_progress_draws_nothing(monkeypatch):
    console, buf = terminal()
    monkeypatch.setattr(progress, "stderr_console", lambda: console)
    analyze_checkpoint("sample:ce")
    assert buf.getvalue() == ""


def test_an_error_is_printed_after_the_start_up_row_is_gone(tmp_path):
    env = {**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "nc_probe", "analyze", str(tmp_path / "missing.pt")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    stderr = ANSI.sub("", proc.stderr)
    assert "starting (importing torch)" in stderr
    last = stderr.rstrip().splitlines()[-1]
    assert last.startswith("error:") and "missing.pt" in last


@pytest.mark.parametrize("case", ["terminal", "terminal -q", "not a terminal"])
def test_the_cli_shows_every_phase_on_a_terminal_only(case, tmp_path):
    """The real command in a process of its own (whose stderr console is made as a user's is): rich's
    TTY_COMPATIBLE=1 says stderr is a terminal, 0 that it is not."""
    args = ["analyze", "sample:ce", "--json", str(tmp_path / "r.json")] + (["-q"] if case.endswith("-q") else [])
    env = {**os.environ, "TTY_COMPATIBLE": "0" if case == "not a terminal" else "1", "COLUMNS": "200"}
    env.pop("FORCE_COLOR", None)
    proc = subprocess.run([sys.executable, "-m", "nc_probe", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    stderr = ANSI.sub("", proc.stderr)
    names = ["starting (importing torch)", "starting ", *CHECKPOINT_PHASES, "writing outputs"]
    warning = "rank-limited: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9"
    if case == "terminal":
        missing = [name for name in names if name not in stderr]
        assert not missing, stderr
        assert stderr.rstrip().endswith(warning)  # printed after the display is gone, on a line of its own
    else:
        assert not [name for name in names if name in stderr]
        assert "\r" not in proc.stderr and "\x1b[?25" not in proc.stderr  # no row drawn, the cursor never hidden
        assert case == "terminal -q" or "\x1b" not in proc.stderr
        assert case == "terminal -q" or proc.stderr.strip().endswith(warning)
    assert json.loads((tmp_path / "r.json").read_text())["inputs"]["num_samples"] == 1347
