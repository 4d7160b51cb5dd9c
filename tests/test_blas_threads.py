"""numpy's bundled OpenBLAS runs on one thread during an analysis, and gets its threads back after."""

import numpy as np
import pytest

from nc_probe.core import blas_threads

threadpoolctl = pytest.importorskip("threadpoolctl")


def _numpy_openblas_threads() -> list[int]:
    selected = blas_threads._numpy_openblas()
    return [] if selected is None else [info["num_threads"] for info in selected.info()]


def test_limited_inside_and_restored_after(monkeypatch):
    before = _numpy_openblas_threads()
    if not before:
        pytest.skip("this numpy does not bundle OpenBLAS")
    seen = []
    import nc_probe
    from nc_probe.analysis import features

    real = features._Analysis.execute

    def execute(self, sha256):
        seen.append(_numpy_openblas_threads())
        return real(self, sha256)

    monkeypatch.setattr(features._Analysis, "execute", execute)
    rng = np.random.default_rng(0)
    nc_probe.analyze_features(rng.standard_normal((60, 4)), np.arange(60) % 3)
    assert seen == [[1] * len(before)]
    assert _numpy_openblas_threads() == before


def test_other_libraries_left_alone():
    """Only libraries inside numpy's own folders are selected (torch's OpenMP, a shared MKL are not)."""
    selected = blas_threads._numpy_openblas()
    if selected is None:
        pytest.skip("this numpy does not bundle OpenBLAS")
    for info in selected.info():
        assert info["internal_api"] == "openblas" and "numpy" in info["filepath"]


def test_overlapping_blocks_restore_once_at_the_last_exit():
    """Analyses on two threads: the first to end must not give numpy its threads back under the other, and the
    last must restore the count numpy had before (not the 1 the other saw)."""
    before = _numpy_openblas_threads()
    if not before:
        pytest.skip("this numpy does not bundle OpenBLAS")
    a, b = blas_threads.numpy_blas_single_threaded(), blas_threads.numpy_blas_single_threaded()
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert _numpy_openblas_threads() == [1] * len(before)
    b.__exit__(None, None, None)
    assert _numpy_openblas_threads() == before
