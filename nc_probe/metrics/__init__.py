"""Metrics: pure functions of float64 statistics, one module per family of ``../shared/metrics-spec.md``.

``METRIC_DOCS`` gives each public key a one-line meaning (used by ``--help`` and the renderers) and
``COLLAPSED`` says which way a metric moves as a model collapses.
"""

METRIC_DOCS = {
    "nc1": "within-class variability relative to between-class: Tr(Sigma_W Sigma_B^+)/C (0 = collapsed)",
    "nc1_cdnv": "class-distance normalized variance, mean over class pairs (0 = collapsed)",
    "nc2_equinorm_M": "spread of centered class-mean norms, std/mean (0 = equal norms)",
    "nc2_equiangle_M": "std of pairwise cosines of centered class means (0 = equal angles)",
    "nc2_maxangle_M": "mean |cos + 1/(C-1)| of centered class means (0 = maximally separated)",
    "nc2_etf_M": "distance of the normalized class-mean Gram matrix to the simplex ETF (0 = ETF)",
    "nc2_equinorm_W": "spread of classifier row norms, std/mean (0 = equal norms)",
    "nc2_equiangle_W": "std of pairwise cosines of classifier rows (0 = equal angles)",
    "nc2_maxangle_W": "mean |cos + 1/(C-1)| of classifier rows (0 = maximally separated)",
    "nc2_etf_W": "distance of the normalized classifier Gram matrix to the simplex ETF (0 = ETF)",
    "nc3": "self-duality: ||W^T/||W|| - M/||M|| ||_F^2 between classifier and centered means (0 = dual)",
    "nc4": "fraction of samples where the classifier and the nearest class center disagree (0 = agree)",
    "acc_model": "accuracy of the model's final linear classifier",
    "acc_ncc": "accuracy of the nearest-class-center rule on the features",
    "rank_energy95": "per class: dimensions holding 95% of the unit-feature energy (1 = collapsed to a line)",
    "rank_energy99": "per class: dimensions holding 99% of the unit-feature energy",
    "rank_effective": "per class: effective rank exp(entropy) of the singular values (Roy & Vetterli)",
    "rank_numerical": "per class: eigenvalues above rank_tol times the largest",
    "coding_rate": "MCR^2 coding rate R of all unit features, nats",
    "coding_rate_class": "per class: MCR^2 coding rate R_c of the class, nats",
    "coding_rate_within": "MCR^2 Rc = sum_c (n_c/N) R_c, nats",
    "rate_reduction": "MCR^2 rate reduction dR = R - Rc, nats (larger = classes more distinct and diverse)",
    "coding_rate_max": "coding rate of isotropic unit features, (d/2) ln(1 + 1/eps^2): the scale of R",
    "angle_min": "per class pair: smallest principal angle between class subspaces, degrees",
    "subspace_affinity": "per class pair: ||U_c^T U_c'||_F^2 / min(k_c, k_c') in [0, 1]",
    "angle_min_mean": "mean smallest principal angle over class pairs, degrees (90 = orthogonal)",
    "angle_min_min": "smallest principal angle of any class pair, degrees",
}

# +1: the metric falls as the features collapse (NC-like); -1: it rises; 0: no direction.
COLLAPSED = {k: 1 for k in METRIC_DOCS if k.startswith(("nc", "rank_", "coding_rate", "rate_reduction",
                                                         "angle_min"))}
COLLAPSED.update({"acc_model": 0, "acc_ncc": 0, "coding_rate_max": 0, "subspace_affinity": -1})

SCALAR_KEYS = [k for k in METRIC_DOCS if k not in ("rank_energy95", "rank_energy99", "rank_effective",
                                                   "rank_numerical", "coding_rate_class", "angle_min",
                                                   "subspace_affinity")]
PER_CLASS_KEYS = ["rank_energy95", "rank_energy99", "rank_effective", "rank_numerical", "coding_rate_class"]
