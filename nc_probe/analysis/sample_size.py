"""The warning for too few samples for the feature dimension (N <= d, or N - C < d).

With N samples of C classes in d dimensions the total covariance has rank <= N - 1 and the within-class covariance
rank <= N - C. Below d, what inverts or counts the dimensions of those matrices measures the sample size, not the
network: a resnet18's 512-wide layer on 200 images gave vci -4.4e-16, a Mahalanobis accuracy of 1 and a numerical
rank of 199. The report still carries the numbers (they are what the definitions give); the warning says which ones
to distrust and why.
"""

from __future__ import annotations

REMEDY = "analyse more samples (many times d) or a lower-dimensional layer"


def sample_size_warnings(n: int, classes: int, d: int) -> list[str]:
    """At most one warning: ``n`` samples of ``classes`` classes analysed, ``d`` the feature dimension."""
    if n <= 0 or classes <= 0:
        return []
    if n <= d:
        return [f"N={n} samples <= d={d} dimensions: the total covariance has rank <= N-1={n - 1} and the within-class "
                f"covariance rank <= N-C={n - classes}, so any labelling of the samples can be separated linearly: "
                "vci (0 by construction), acc_ncc_mahalanobis and acc_linear_probe (near 1), and rank_numerical_total, "
                f"rankme, rank_effective_total and alpha_req (capped at N-1) are artefacts of N <= d, not measurements "
                f"of collapse; {REMEDY}"]
    if n - classes < d:
        return [f"N-C={n - classes} < d={d} (N={n} samples, C={classes} classes): the within-class covariance has "
                f"rank <= {n - classes}, so its pseudo-inverse sees only part of the {d} dimensions: "
                "acc_ncc_mahalanobis and acc_linear_probe overstate how well the classes separate (often 1) and vci is "
                f"biased towards 0; {REMEDY}"]
    return []
