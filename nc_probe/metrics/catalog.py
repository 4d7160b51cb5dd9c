"""The metric catalog: every public key with its meaning, shape, unit and direction, in one place.

``compare`` (arrows and words), the gate's help, the HTML page, the terminal and ``docs/metrics.md`` all read
this table, so a metric's direction is stated once. A direction is the way the value moves when the features get
"more <word>": nc1 falls as they get more collapsed, angle_min rises as classes get more separated, a class rank
falls as classes get more compressed, rate reduction rises as classes get more separated.
"""

from __future__ import annotations

from dataclasses import dataclass

COLLAPSED, SEPARATED, COMPRESSED, DIVERSE, ACCURATE = (
    "more collapsed", "more separated", "more compressed", "more diverse", "more accurate")


@dataclass(frozen=True)
class Metric:
    """One public metric key.

    ``shape``: "scalar", "per_class" (a list over classes), "pair" (a class x class matrix), "layer" (one value per
    layer of a layer report) or "fit" (a depth law fitted over the layers). ``direction``:
    "lower" or "higher", the way the value moves as the features get ``word``; None for metrics without one.
    """

    key: str
    doc: str
    shape: str = "scalar"
    unit: str = ""
    direction: str | None = None
    word: str | None = None

    @property
    def arrow(self) -> str:
        return {"lower": "↓", "higher": "↑"}.get(self.direction or "", "")


def _m(key, doc, shape="scalar", unit="", direction=None, word=None) -> Metric:
    return Metric(key, doc, shape, unit, direction, word)


_NC2 = {
    "equinorm": "spread of {what} norms, std/mean (0 = equal norms)",
    "equiangle": "std of pairwise cosines of {what} (0 = equal angles)",
    "maxangle": "mean |cos + 1/(C-1)| of {what} (0 = maximally separated)",
    "etf": "distance of the normalized {what} Gram matrix to the simplex ETF (0 = ETF)",
}

CATALOG: dict[str, Metric] = {m.key: m for m in [
    _m("nc1", "within-class variability relative to between-class: Tr(Sigma_W Sigma_B^+)/C (0 = collapsed)",
       direction="lower", word=COLLAPSED),
    _m("nc1_cdnv", "class-distance normalized variance, mean over class pairs (0 = collapsed)",
       direction="lower", word=COLLAPSED),
    *[_m(f"nc2_{k}_M", doc.format(what="centered class-mean"), direction="lower", word=COLLAPSED)
      for k, doc in _NC2.items()],
    *[_m(f"nc2_{k}_W", doc.format(what="classifier-row"), direction="lower", word=COLLAPSED)
      for k, doc in _NC2.items()],
    _m("nc3", "self-duality: ||W^T/||W|| - M/||M|| ||_F^2 between classifier and centered means (0 = dual)",
       direction="lower", word=COLLAPSED),
    _m("nc1_quot", "Tr(Sigma_W) / Tr(Sigma_B): NC1 without the pseudo-inverse (Tirer et al. 2023; 0 = collapsed)",
       direction="lower", word=COLLAPSED),
    _m("nc3_etf", "|| W M / ||W M||_F - E ||_F, E the simplex-ETF Gram: NC3 as tding1 and rhubarbwu compute it "
       "(0 = dual)", direction="lower", word=COLLAPSED),
    _m("unc3", "variance over classes of cos(w_c, m_c): uniform duality (Wu & Papyan 2024; 0 = uniform)",
       direction="lower", word=COLLAPSED),
    _m("gnc2_log_mean", "mean over class pairs of log(1/||u_c - u_c'||), u_c the normalized centred means: "
       "hyperspherical energy (Liu et al. 2023; lower = more uniform)", direction="lower", word=SEPARATED),
    _m("gnc2_log_var", "variance over class pairs of log(1/||u_c - u_c'||) (0 = equidistant means)",
       direction="lower", word=COLLAPSED),
    _m("bias_collapse", "|| W mu_G + b ||: the classifier's output at the global mean (Zhu et al. 2021; 0 = "
       "collapsed)", direction="lower", word=COLLAPSED),
    _m("vci", "variability collapse index 1 - Tr(Sigma_T^+ Sigma_B)/min(d, C-1) (Xu & Liu 2023; 0 = collapsed; "
       "unchanged by invertible linear maps)", direction="lower", word=COLLAPSED),
    _m("minority_norm_spearman", "Spearman correlation of classifier-row norms ||w_c|| with class counts n_c "
       "(minority collapse, Fang et al. 2021; None when counts are equal)"),
    _m("minority_cosine_mean", "mean pairwise cosine of the classifier rows of the least frequent quarter of the "
       "classes (1 = minority rows collapsed together; None when counts are equal)", direction="higher",
       word=COLLAPSED),
    _m("nc4", "fraction of samples where the classifier and the nearest class center disagree (0 = agree)",
       unit="fraction", direction="lower", word=COLLAPSED),
    _m("acc_model", "accuracy of the model's final linear classifier", unit="fraction", direction="higher",
       word=ACCURATE),
    _m("acc_ncc", "accuracy of the nearest-class-center rule on the features", unit="fraction",
       direction="higher", word=ACCURATE),
    _m("rank_energy95", "per class: dimensions holding 95% of the unit-feature energy (1 = collapsed to a line)",
       "per_class", "dimensions", "lower", COMPRESSED),
    _m("rank_energy99", "per class: dimensions holding 99% of the unit-feature energy", "per_class",
       "dimensions", "lower", COMPRESSED),
    _m("rank_effective", "per class: effective rank exp(entropy) of the singular values (Roy & Vetterli)",
       "per_class", "dimensions", "lower", COMPRESSED),
    _m("rank_numerical", "per class: eigenvalues above rank_tol times the largest", "per_class", "dimensions",
       "lower", COMPRESSED),
    _m("coding_rate", "MCR^2 coding rate R of all unit features, nats (larger = more diverse features)",
       unit="nats", direction="higher", word=DIVERSE),
    _m("coding_rate_class", "per class: MCR^2 coding rate R_c of the class, nats", "per_class", "nats", "lower",
       COMPRESSED),
    _m("coding_rate_within", "MCR^2 Rc = sum_c (n_c/N) R_c, nats (smaller = classes more compressed)",
       unit="nats", direction="lower", word=COMPRESSED),
    _m("rate_reduction", "MCR^2 rate reduction dR = R - Rc, nats (larger = classes more distinct and diverse)",
       unit="nats", direction="higher", word=SEPARATED),
    _m("coding_rate_max", "coding rate of isotropic unit features, (d/2) ln(1 + 1/eps^2): the scale of R",
       unit="nats"),
    _m("angle_min", "per class pair: smallest principal angle between class subspaces, degrees", "pair",
       "degrees", "higher", SEPARATED),
    _m("subspace_affinity", "per class pair: ||U_c^T U_c'||_F^2 / min(k_c, k_c') in [0, 1]", "pair", "",
       "lower", SEPARATED),
    _m("angle_min_mean", "mean smallest principal angle over class pairs, degrees (90 = orthogonal)",
       unit="degrees", direction="higher", word=SEPARATED),
    _m("angle_min_min", "smallest principal angle of any class pair, degrees", unit="degrees",
       direction="higher", word=SEPARATED),
    _m("acc_ncc_mahalanobis", "accuracy of the nearest class mean under the shared within-class covariance, "
       "argmin (h - mu_c)^T Sigma_W^+ (h - mu_c) (Lee et al. 2018; --mahalanobis)", unit="fraction",
       direction="higher", word=ACCURATE),
    _m("acc_nearest_subspace", "accuracy of the MCR^2 papers' nearest-subspace rule: unit feature to the class whose "
       "top min(30, rank_numerical) eigenvectors of S_c leave the smallest residual (Yu et al. 2020)",
       unit="fraction", direction="higher", word=ACCURATE),
    _m("nc1_test", "test rows' within-class scatter about the TRAIN class means against the train Sigma_B^+, / C "
       "(Hui et al. 2022; --split train,test)", direction="lower", word=COLLAPSED),
    _m("nc1_cdnv_test", "CDNV of the test rows about the train class means, over the train means' distances",
       direction="lower", word=COLLAPSED),
    _m("acc_ncc_test", "accuracy of the nearest TRAIN class mean on the test rows", unit="fraction",
       direction="higher", word=ACCURATE),
    _m("nc1_test_ratio", "nc1_test / the train split's nc1 (1 = test collapses as far as train)"),
    _m("nc1_cdnv_test_ratio", "nc1_cdnv_test / the train split's nc1_cdnv"),
    _m("acc_ncc_test_ratio", "acc_ncc_test / the train split's acc_ncc"),
    _m("rank_numerical_total", "numerical rank of the total feature covariance: eigenvalues above rank_tol times "
       "the largest", unit="dimensions", direction="lower", word=COMPRESSED),
    _m("rankme", "label-free: exp entropy of the normalized singular values of the features as given (Garrido et "
       "al. 2023; between 1 and min(N, d))", unit="dimensions", direction="lower", word=COMPRESSED),
    _m("alpha_req", "label-free: power-law decay exponent of the total covariance spectrum, -slope of log lambda_k "
       "on log k (Agrawal et al. 2022; larger = faster decay)", direction="higher", word=COMPRESSED),
    _m("rank_effective_total", "label-free: participation ratio (sum lambda)^2 / sum lambda^2 of the total "
       "covariance (Gao et al. 2017)", unit="dimensions", direction="lower", word=COMPRESSED),
    _m("lidar", "label-free: rankme's entropy form over the LDA spectrum of surrogate classes, the views of one "
       "source sample (Thilak et al. 2024; only with views)", unit="dimensions", direction="lower", word=COMPRESSED),
    _m("acc_linear_probe", "accuracy of a closed-form ridge probe (one-hot targets, lambda = 1e-3 Tr(Sigma)/d) "
       "on the analysed features", unit="fraction", direction="higher", word=ACCURATE),
    _m("D_l", "per layer: separation fuzziness Tr(Sigma_W Sigma_B^+) = C * nc1 (He & Su)", "layer",
       direction="lower", word=COLLAPSED),
    _m("rho", "depth law ln D_l = a - rho * l: decay of the fuzziness per layer", "fit", direction="higher",
       word=COLLAPSED),
    _m("a", "depth law ln D_l = a - rho * l: the intercept", "fit"),
    _m("r2", "depth law: R^2 of the least-squares fit of ln D_l against l", "fit"),
]}

METRIC_DOCS = {k: m.doc for k, m in CATALOG.items()}
SCALAR_KEYS = [k for k, m in CATALOG.items() if m.shape == "scalar"]
PER_CLASS_KEYS = [k for k, m in CATALOG.items() if m.shape == "per_class"]
PAIR_KEYS = [k for k, m in CATALOG.items() if m.shape == "pair"]


def metric(key: str) -> Metric | None:
    """The catalog entry of ``key``; ``"rank_energy95 (mean)"`` (a per-class mean in a comparison) reads as its
    metric."""
    return CATALOG.get(key.split(" ")[0])
