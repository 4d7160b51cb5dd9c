"""nc_probe.analyze_features against an independent, plain-numpy TWO-PASS recomputation of every metric.

The reference below is written straight from the definitions in ``docs/metrics.md`` and shares no code with
``nc_probe.metrics``: class means first, then deviations from them (two passes); ``Sigma_B^+`` by ``np.linalg.pinv``
of the d x d matrix with the spec's cutoff; coding rates by ``np.linalg.slogdet``; effective ranks from the singular
values of the normalized data (not from eigenvalues of a Gram matrix); nearest class centers by direct distances;
principal angles as ``arccos`` of the largest SVD cosine (only used where the smallest angle is above ~0.1 degree, so
arccos is well conditioned; near-parallel subspaces are covered by ``test_known_answers.py``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import nc_probe

EPS64 = np.finfo(np.float64).eps
RTOL = 1e-9


# ---------------------------------------------------------------------------------------------- the reference
def _nc2(V: np.ndarray) -> dict:
    """The four NC2 numbers of the rows of V (C x d)."""
    C = len(V)
    norms = np.array([math.sqrt(float(v @ v)) for v in V])
    cos = np.array([V[i] @ V[j] / (norms[i] * norms[j]) for i, j in itertools.combinations(range(C), 2)])
    G = V @ V.T
    target = (np.eye(C) - np.ones((C, C)) / C) / math.sqrt(C - 1)
    return {
        "equinorm": norms.std() / norms.mean(),
        "equiangle": cos.std(),
        "maxangle": np.mean(np.abs(cos + 1 / (C - 1))),
        "etf": np.linalg.norm(G / np.linalg.norm(G, "fro") - target, "fro"),
    }


def _energy_rank(lam: np.ndarray, fraction: float) -> int:
    total = lam.sum()
    acc = 0.0
    for k, v in enumerate(lam, start=1):
        acc += v
        if acc >= fraction * total:
            return k
    return len(lam)


def _min_angle(Ua: np.ndarray, Ub: np.ndarray) -> tuple[float, float]:
    """Smallest principal angle (degrees) by arccos of the largest cosine, and the affinity."""
    d = Ua.shape[0]
    P = Ua.T @ Ub
    cos = np.linalg.svd(P, compute_uv=False)
    aff = float(np.sum(cos**2) / min(Ua.shape[1], Ub.shape[1]))
    if Ua.shape[1] + Ub.shape[1] > d:
        return 0.0, aff
    # arccos amplifies rounding by 1/sin(theta): keep theta above ~0.1 degree (factor < 1e3) in this file.
    assert cos[0] < 1 - 1e-6, "reference arccos is ill-conditioned here: use better separated data in this file"
    return math.degrees(math.acos(cos[0])), aff


def reference(H, y, W=None, b=None, *, eps2=0.5, rank_tol=1e-6, subspace_dim=None) -> dict:
    """Every metric of the spec, two-pass float64 numpy. Returns scalars and per-class arrays (sorted label ids)."""
    H = np.asarray(H, dtype=np.float64)
    y = np.asarray(y)
    N, d = H.shape
    ids = np.unique(y)  # classes with samples, ascending; empty ones are left out
    C = len(ids)
    n = np.array([np.sum(y == c) for c in ids])
    # pass 1: means
    mu = np.stack([H[y == c].mean(0) for c in ids])
    mu_G = mu.mean(0)
    M = (mu - mu_G).T  # d x C
    # pass 2: deviations from the final means
    pos = np.searchsorted(ids, y)
    D = H - mu[pos]
    Sigma_W = D.T @ D / N
    Sigma_B = M @ M.T / C
    out = {"nc1": np.trace(Sigma_W @ np.linalg.pinv(Sigma_B, rcond=max(d, C) * EPS64)) / C}
    V = np.array([np.sum(D[y == c] ** 2) / nc for c, nc in zip(ids, n)])
    out["nc1_cdnv"] = np.mean([(V[i] + V[j]) / (2 * np.sum((mu[i] - mu[j]) ** 2))
                               for i, j in itertools.combinations(range(C), 2)])
    out.update({f"nc2_{k}_M": v for k, v in _nc2(M.T).items()})
    if W is not None:
        W = np.asarray(W, dtype=np.float64)
        out.update({f"nc2_{k}_W": v for k, v in _nc2(W[ids]).items()})
        Wc = W[ids]
        out["nc3"] = np.sum((Wc.T / np.linalg.norm(Wc, "fro") - M / np.linalg.norm(M, "fro")) ** 2)
    # NCC by direct distances, ties to the lowest label (np.argmin takes the first).
    dist = np.sqrt(((H[:, None, :] - mu[None, :, :]) ** 2).sum(-1))
    ncc = ids[np.argmin(dist, axis=1)]
    out["acc_ncc"] = np.mean(ncc == y)
    out["acc_ncc_class"] = np.array([np.mean(ncc[y == c] == c) for c in ids])
    if W is not None:
        logits = H @ W.T + (0 if b is None else np.asarray(b, dtype=np.float64))
        model = np.argmax(logits, axis=1)  # over all rows of W (the model's own prediction)
        out["nc4"] = np.mean(model != ncc)
        out["acc_model"] = np.mean(model == y)
        out["acc_model_class"] = np.array([np.mean(model[y == c] == c) for c in ids])
    out["within_class_variance"] = V
    out["mean_norm"] = np.linalg.norm(M, axis=0)

    # Subspace metrics on unit features (zero rows stay zero but count in n_c).
    norms = np.linalg.norm(H, axis=1)
    Z = H / np.where(norms > 0, norms, 1)[:, None]
    a = d / eps2
    out["coding_rate_max"] = d / 2 * math.log(1 + 1 / eps2)
    out["coding_rate"] = 0.5 * np.linalg.slogdet(np.eye(d) + a * (Z.T @ Z) / N)[1]
    per = {k: [] for k in ("rank_energy95", "rank_energy99", "rank_effective", "rank_numerical",
                           "coding_rate_class")}
    bases = []
    for c, nc in zip(ids, n):
        Zc = Z[y == c]
        S = Zc.T @ Zc / nc
        lam, vec = np.linalg.eigh(S)
        lam, vec = np.maximum(lam[::-1], 0), vec[:, ::-1]
        r95 = _energy_rank(lam, 0.95)
        per["rank_energy95"].append(r95)
        per["rank_energy99"].append(_energy_rank(lam, 0.99))
        sig = np.linalg.svd(Zc / math.sqrt(nc), compute_uv=False)  # sqrt of the nonzero eigenvalues of S_c
        p = sig[sig > 0] / sig.sum()
        per["rank_effective"].append(math.exp(-np.sum(p * np.log(p))))
        per["rank_numerical"].append(int(np.sum(lam > rank_tol * lam[0])))
        sign, logdet = np.linalg.slogdet(np.eye(d) + a * S)
        assert sign > 0
        per["coding_rate_class"].append(0.5 * logdet)
        bases.append(vec[:, : (subspace_dim or max(r95, 1))])
    out.update({k: np.array(v) for k, v in per.items()})
    out["coding_rate_within"] = float(np.sum(n / N * out["coding_rate_class"]))
    out["rate_reduction"] = out["coding_rate"] - out["coding_rate_within"]
    angle, aff = np.zeros((C, C)), np.eye(C)
    for i, j in itertools.combinations(range(C), 2):
        angle[i, j], aff[i, j] = _min_angle(bases[i], bases[j])
        angle[j, i], aff[j, i] = angle[i, j], aff[i, j]
    out["angle_min"], out["subspace_affinity"] = angle, aff
    iu = np.triu_indices(C, 1)
    out["angle_min_mean"], out["angle_min_min"] = angle[iu].mean(), angle[iu].min()
    out["class_ids"], out["n"] = ids, n
    return out


# ---------------------------------------------------------------------------------------------- comparison
SCALARS = ["nc1", "nc1_cdnv", "nc2_equinorm_M", "nc2_equiangle_M", "nc2_maxangle_M", "nc2_etf_M", "acc_ncc",
           "coding_rate_max", "coding_rate", "coding_rate_within", "rate_reduction", "angle_min_mean",
           "angle_min_min"]
CLASSIFIER_SCALARS = ["nc2_equinorm_W", "nc2_equiangle_W", "nc2_maxangle_W", "nc2_etf_W", "nc3", "nc4",
                      "acc_model"]


def assert_matches_reference(report: nc_probe.Report, ref: dict, *, has_W: bool, rtol: float = RTOL):
    m = report.metrics
    for key in SCALARS + (CLASSIFIER_SCALARS if has_W else []):
        assert m[key] == pytest.approx(ref[key], rel=rtol, abs=1e-12), key
    if not has_W:
        for key in CLASSIFIER_SCALARS:
            assert m[key] is None, key
    pc = report.per_class
    assert pc["class_ids"] == ref["class_ids"].tolist()
    assert pc["subspace_class_ids"] == ref["class_ids"].tolist()
    assert pc["n"] == ref["n"].tolist()
    for key in ("rank_energy95", "rank_energy99", "rank_numerical"):
        assert pc[key] == ref[key].tolist(), key
    for key in ("rank_effective", "coding_rate_class", "within_class_variance", "mean_norm"):
        np.testing.assert_allclose(pc[key], ref[key], rtol=rtol, atol=1e-12, err_msg=key)
    np.testing.assert_allclose(pc["acc_ncc"], ref["acc_ncc_class"], rtol=0, atol=1e-15)
    if has_W:
        np.testing.assert_allclose(pc["acc_model"], ref["acc_model_class"], rtol=0, atol=1e-15)
    assert report.angles["class_ids"] == ref["class_ids"].tolist()
    np.testing.assert_allclose(report.angles["angle_min"], ref["angle_min"], rtol=rtol, atol=1e-9)
    np.testing.assert_allclose(report.angles["subspace_affinity"], ref["subspace_affinity"], rtol=rtol, atol=1e-12)


# ---------------------------------------------------------------------------------------------- the cases
@pytest.mark.parametrize("chunk_rows", [None, 7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_d_greater_than_n_noncontiguous_labels(blobs, seed, chunk_rows):
    """d=40 > N=30, unequal classes with labels {0, 2, 5}: classes 1, 3, 4 are empty and left out."""
    H, y, W, b = blobs(seed, {0: 17, 2: 9, 5: 4}, 40)
    r = nc_probe.analyze_features(H, y, W, b, chunk_rows=chunk_rows)
    ref = reference(H, y, W, b)
    assert_matches_reference(r, ref, has_W=True)
    assert r.inputs["empty_classes"] == [1, 3, 4]
    assert r.inputs["class_ids"] == [0, 2, 5]
    assert (r.inputs["num_samples"], r.inputs["num_classes"], r.inputs["num_labels"], r.inputs["dim"]) == (30, 3, 6,
                                                                                                         40)
    assert any("no samples" in w and "1, 3, 4" in w for w in r.warnings)


def test_singleton_class_zero_feature_and_offset(blobs):
    """A class of one sample (zero within-class scatter), an exactly-zero feature vector, means far from 0."""
    H, y, W, b = blobs(3, {0: 60, 1: 35, 2: 1, 3: 80}, 12, offset=50.0)
    zero_row = np.flatnonzero(y == 1)[0]
    H[zero_row] = 0.0
    r = nc_probe.analyze_features(H, y, W, b, chunk_rows=50)
    ref = reference(H, y, W, b)
    assert_matches_reference(r, ref, has_W=True)
    assert r.per_class["within_class_variance"][2] == 0.0
    assert r.inputs["zero_features"] == 1
    assert r.per_class["zero_features"] == [0, 1, 0, 0]
    assert r.inputs["empty_classes"] == []


def test_without_classifier(blobs):
    """No W: the classifier metrics are absent (None), everything else as the reference."""
    H, y, _, _ = blobs(4, {0: 50, 1: 20, 2: 70, 3: 33}, 8)
    r = nc_probe.analyze_features(H, y)
    assert_matches_reference(r, reference(H, y), has_W=False)
    assert r.per_class["acc_model"] is None
    assert r.inputs["has_classifier"] is False


def test_logits_give_acc_model_and_nc4(blobs):
    """Stored logits W h + b give acc_model and nc4 without W, equal to the values computed from W and b."""
    H, y, W, b = blobs(5, {0: 40, 1: 25, 2: 30}, 10)
    ref = reference(H, y, W, b)
    r = nc_probe.analyze_features(H, y, logits=H @ W.T + b)
    assert r.metrics["acc_model"] == pytest.approx(ref["acc_model"], abs=1e-15)
    assert r.metrics["nc4"] == pytest.approx(ref["nc4"], abs=1e-15)
    assert r.metrics["nc3"] is None
    assert 0 < ref["acc_model"] < 1  # the data make the classifier imperfect, so acc_model is informative


@pytest.mark.parametrize("eps2,rank_tol,subspace_dim", [(0.3, 1e-3, 3), (2.0, 1e-6, 1), (0.5, 1e-2, None)])
def test_settings(blobs, eps2, rank_tol, subspace_dim):
    """Other eps^2, rank tolerance and fixed subspace dimension, on 7 classes with mixed sizes."""
    sizes = {c: n for c, n in enumerate([5, 40, 12, 33, 8, 21, 17])}
    H, y, W, b = blobs(6, sizes, 24, spread=0.7)
    r = nc_probe.analyze_features(H, y, W, b, eps2=eps2, rank_tol=rank_tol, subspace_dim=subspace_dim)
    assert_matches_reference(r, reference(H, y, W, b, eps2=eps2, rank_tol=rank_tol, subspace_dim=subspace_dim),
                             has_W=True)
    if subspace_dim is not None:
        assert r.per_class["basis_dim"] == [subspace_dim] * 7


def test_float32_and_torch_inputs(blobs):
    """float32 torch tensors are accumulated in float64: same numbers as the reference on the float32 values."""
    import torch

    H, y, W, b = blobs(7, {0: 30, 1: 45, 3: 25}, 16)
    H32, W32, b32 = H.astype(np.float32), W.astype(np.float32), b.astype(np.float32)
    r = nc_probe.analyze_features(torch.from_numpy(H32), torch.from_numpy(y), torch.from_numpy(W32),
                                  torch.from_numpy(b32))
    assert_matches_reference(r, reference(H32.astype(np.float64), y, W32.astype(np.float64), b32.astype(np.float64)),
                             has_W=True)


def test_reference_is_discriminating(blobs):
    """Guard on the comparison itself: a perturbed feature matrix is detected at the tolerance used above."""
    H, y, W, b = blobs(0, {0: 17, 2: 9, 5: 4}, 40)
    r = nc_probe.analyze_features(H, y, W, b)
    H2 = H.copy()
    H2[0, 0] *= 1 + 1e-6
    with pytest.raises(AssertionError):
        assert_matches_reference(r, reference(H2, y, W, b), has_W=True)
