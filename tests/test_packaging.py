"""The wheel carries every package and the samples: pyproject.toml lists packages explicitly (the samples live at
the top of the repository and are mapped into the package), so a new sub-package must be listed there."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def test_every_subpackage_is_listed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "nc_probe").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert on_disk <= listed, on_disk - listed
    assert config["package-dir"]["nc_probe.sample_checkpoints"] == "sample_checkpoints"
    shipped = {p.name for p in (REPO / "sample_checkpoints").glob("*.pt")}
    assert {"ce.pt", "mcr2.pt"} <= shipped


def test_samples_resolve_through_the_package():
    from nc_probe.load import samples

    assert samples.sample_path("sample:ce").is_file()
    assert "ce" in samples.sample_names() and "mcr2" in samples.sample_names()
