"""The public names: every name ``nc_probe`` exports resolves, every type an exported function returns is exported
beside it, and every ``nc_probe`` name the README and docs/ show resolves to something that exists."""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from pathlib import Path

import pytest

import nc_probe
from nc_probe.core.errors import InputError

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# ``nc_probe.json``: the metadata file a Hugging Face folder may carry, a file name and no Python name
FILE_NAMES = {"nc_probe.json"}


def resolve(dotted: str):
    """The object a dotted name names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_export_resolves_and_is_listed():
    assert set(nc_probe.__all__) == set(nc_probe._EXPORTS) | {"__version__"}
    for name in nc_probe._EXPORTS:
        obj = getattr(nc_probe, name)
        assert getattr(obj, "__name__", name) == name, name  # the name is the object's own
    with pytest.raises(AttributeError):
        nc_probe.no_such_name  # noqa: B018


def test_every_type_an_exported_function_returns_is_exported():
    exported = {id(getattr(nc_probe, n)) for n in nc_probe._EXPORTS}
    checked = 0
    for name in nc_probe._EXPORTS:
        fn = getattr(nc_probe, name)
        if not inspect.isfunction(fn):
            continue
        returned = typing.get_type_hints(fn).get("return")
        for t in typing.get_args(returned) or (returned,):
            if isinstance(t, type) and t.__module__.startswith("nc_probe."):
                assert id(t) in exported, f"{name} returns {t.__module__}.{t.__name__}, which nc_probe does not export"
                checked += 1
    assert checked >= 10  # Report, LayerReport, Comparison, LayerComparison, Trajectory, FeatureStore, ...


def _documented_names() -> set[str]:
    names = set()
    for doc in DOCUMENTS:
        text = doc.read_text()
        # ``nc_probe.x.y`` (not ``pkg:factory`` identifiers, which name no import), and ``from nc_probe... import``
        names |= {m.group(1) for m in re.finditer(r"(?<![\w/.])(nc_probe(?:\.\w+)+)(?![\w:])", text)} - FILE_NAMES
        for module, imported in re.findall(r"from (nc_probe[\w.]*) import ([\w, ]+)", text):
            names |= {f"{module}.{n.strip()}" for n in imported.split(",") if n.strip()}
    return names


def test_every_name_the_documents_show_resolves():
    names = _documented_names()
    assert "nc_probe.analyze_checkpoint" in names and "nc_probe.Settings" in names  # the scan finds them
    missing = []
    for name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
        except InputError as e:  # an optional extra that is not installed: the error must say how to get it
            if "pip install" not in str(e):
                missing.append(name)
    assert not missing, missing
