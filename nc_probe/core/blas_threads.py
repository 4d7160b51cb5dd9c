"""numpy's own BLAS kept to one thread while an analysis runs (:func:`numpy_blas_single_threaded`).

The heavy products run on torch's kernels; numpy's BLAS (the OpenBLAS its wheels bundle) only sees small d x d and
C x d problems. But after each multi-threaded call OpenBLAS's worker threads spin for a while (~0.1 s) waiting for
more work, and on a machine with few cores they take the cores torch's threads need: on the 2-core Xeon a 512 x 512
``torch.linalg.eigh`` took 0.08-0.12 s right after a numpy product, 0.017 s otherwise, and the collapse metrics alone
at N = 200k, d = 512, C = 100 ran 0.12 s (9%) faster with numpy's BLAS on one thread. Only the OpenBLAS shipped
inside numpy's own wheel is limited: a BLAS that torch may share (conda's MKL or OpenBLAS, torch's own on ARM) is
left as it is. Without threadpoolctl (or with a numpy built otherwise) this does nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator


@functools.lru_cache(maxsize=1)
def _numpy_openblas():
    """threadpoolctl's controller of numpy's bundled OpenBLAS, or None."""
    try:
        import numpy
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    here = os.path.dirname(os.path.abspath(numpy.__file__))
    # numpy wheels put their OpenBLAS in numpy.libs (Linux, Windows) or numpy/.dylibs (macOS)
    homes = (here + os.sep, os.path.join(os.path.dirname(here), "numpy.libs") + os.sep)
    try:
        controller = ThreadpoolController()
    except Exception:  # threadpoolctl inspects the loaded libraries; an odd platform is not our failure
        return None
    paths = [info["filepath"] for info in controller.info()
             if info.get("internal_api") == "openblas" and str(info.get("filepath", "")).startswith(homes)]
    return controller.select(filepath=paths) if paths else None


_lock = threading.Lock()
_holders = 0  # analyses inside the block now (threads of one process): the first limits, the last restores
_limiter = None


@contextlib.contextmanager
def numpy_blas_single_threaded() -> Iterator[None]:
    """Within the block, numpy's bundled OpenBLAS uses one thread; its own count is restored when the last of
    overlapping blocks (analyses on several threads) ends, not by each: a nested restore would leave it at 1."""
    global _holders, _limiter
    selected = _numpy_openblas()
    if selected is None:
        yield
        return
    with _lock:
        if _holders == 0:
            _limiter = selected.limit(limits=1)
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None
