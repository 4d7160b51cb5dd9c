"""Symmetric eigendecompositions of numpy float64 matrices on torch's LAPACK.

During an analysis numpy's OpenBLAS runs on one thread (:mod:`nc_probe.core.blas_threads`): a 512 x 512 ``eigh``
there took 30 ms against 13 ms for torch's on the 2-core Xeon, and the collapse metrics take several.
"""

from __future__ import annotations

import numpy as np
import torch


def eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric float64 matrix ``a``, as numpy arrays."""
    lam, vec = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)))
    return lam.numpy(), vec.numpy()
