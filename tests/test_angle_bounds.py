"""All-pairs principal angles (``nc_probe.metrics.angles``) against an independent computation, pair by pair.

The reference is written from the definition with numpy's SVD (not torch's eigensolver, which the engine uses):
cosines are the singular values of ``U_a^T U_b``, and below 45 degrees the angle comes from the sines, the singular
values of ``U_b - U_a U_a^T U_b`` (Bjorck & Golub, as ``scipy.linalg.subspace_angles`` does). Cases: random bases
of mixed sizes (hypothesis), near-identical subspaces, orthogonal ones (90 degrees), clustered singular values
(several principal angles equal), and tilings whose ranges pad the blocks to different widths.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nc_probe.metrics.angles import all_pair_angles

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ATOL_DEGREES = 1e-9  # float64 throughout: far inside the 1e-6 contract


def reference_angle(Ua: np.ndarray, Ub: np.ndarray) -> tuple[float, float]:
    """Smallest principal angle (degrees) and affinity of two orthonormal bases, from numpy's SVD."""
    if Ua.shape[1] < Ub.shape[1]:
        Ua, Ub = Ub, Ua
    P = Ua.T @ Ub
    affinity = float(np.sum(P**2) / Ub.shape[1])
    if Ua.shape[1] + Ub.shape[1] > Ua.shape[0]:
        return 0.0, affinity
    cos = np.linalg.svd(P, compute_uv=False)[0]
    if cos**2 <= 0.5:
        return math.degrees(math.acos(min(cos, 1.0))), affinity
    sin = np.linalg.svd(Ub - Ua @ P, compute_uv=False)[-1]
    return math.degrees(math.asin(min(sin, 1.0))), affinity


def planted(rng, d: int, degrees: list[float], extra: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two subspaces with principal angles ``degrees`` (and ``extra`` more dimensions of b orthogonal to a), each
    basis turned by a random rotation within its span so that no column is a principal vector."""
    k = len(degrees)
    Q = np.linalg.qr(rng.normal(size=(d, 2 * k + extra)))[0]
    t = np.radians(degrees)
    Ua = Q[:, :k]
    Ub = np.column_stack([np.cos(t) * Q[:, :k] + np.sin(t) * Q[:, k:2 * k], Q[:, 2 * k:]])
    Ra = np.linalg.qr(rng.normal(size=(k, k)))[0]
    Rb = np.linalg.qr(rng.normal(size=(k + extra, k + extra)))[0]
    return Ua @ Ra, Ub @ Rb


def check_against_reference(bases: list[np.ndarray], **kw) -> np.ndarray:
    originals = [b.copy() for b in bases]
    r = all_pair_angles(bases, keep_matrices=True, **kw)
    K = len(bases)
    for i, j in itertools.combinations(range(K), 2):
        angle, affinity = reference_angle(originals[i], originals[j])
        assert r.angle_matrix[i, j] == r.angle_matrix[j, i]
        assert abs(r.angle_matrix[i, j] - angle) <= ATOL_DEGREES, (i, j, r.angle_matrix[i, j], angle)
        assert r.affinity_matrix[i, j] == pytest.approx(affinity, rel=1e-12, abs=1e-15), (i, j)
    # the bases are now views of one stacked matrix: the same numbers
    for b, o in zip(bases, originals):
        np.testing.assert_array_equal(b, o)
    upper = r.angle_matrix[np.triu_indices(K, 1)]
    assert r.angle.count == len(upper)
    assert r.angle.lo == upper.min() and r.angle.mean == pytest.approx(upper.mean(), rel=1e-12)
    return r.angle_matrix


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(4, 40), classes=st.integers(2, 9),
       tile_columns=st.sampled_from([1, 3, 8, 30, 4096]))
def test_random_bases_of_mixed_sizes_match_the_svd_reference(seed, d, classes, tile_columns):
    rng = np.random.default_rng(seed)
    ks = rng.integers(1, max(2, d // 2) + 1, classes)
    bases = [np.linalg.qr(rng.normal(size=(d, int(k))))[0] for k in ks]
    check_against_reference(bases, tile_columns=tile_columns)


@pytest.mark.parametrize("degrees", [1e-7, 1e-4, 0.5, 5.0, 5.8, 30.0, 60.0, 89.9999])
def test_planted_angles_are_recovered(degrees):
    """The smallest angle of a planted pair is known exactly; the other principal angles are larger."""
    rng = np.random.default_rng(7)
    d = 40
    Ua, Ub = planted(rng, d, [degrees, min(degrees * 1.5 + 1, 90.0), 90.0], extra=2)
    angles = check_against_reference([Ua, Ub, *planted(rng, d, [45.0, 50.0])], tile_columns=5)
    assert angles[0, 1] == pytest.approx(degrees, rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("degrees", [1e-6, 3.0, 40.0, 75.0])
def test_clustered_singular_values_equal_angles(degrees):
    """Several principal angles equal (a repeated top singular value of ``U_a^T U_b``), or equal to within 1e-12:
    the top eigenvalue is still exact."""
    rng = np.random.default_rng(11)
    d = 48
    pairs = [planted(rng, d, [degrees] * 6), planted(rng, d, [degrees * (1 + 1e-12 * j) for j in range(6)], 3)]
    bases = [b for pair in pairs for b in pair]
    angles = check_against_reference(bases, tile_columns=12)
    assert angles[0, 1] == pytest.approx(degrees, rel=1e-7)
    assert angles[2, 3] == pytest.approx(degrees, rel=1e-7)


def test_near_identical_and_orthogonal_subspaces():
    rng = np.random.default_rng(3)
    d = 30
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    a, b = Q[:, :5], Q[:, 5:10]  # orthogonal spans, rotated off the axes: 90 degrees up to rounding
    same = a @ np.linalg.qr(rng.normal(size=(5, 5)))[0]  # the span of a, another basis: 0 degrees
    near_a, near_b = planted(rng, d, [1e-8, 2e-8, 3e-8])  # 1e-8 degrees apart: arccos of the cosine would give 0
    angles = check_against_reference([a, b, same, near_a, near_b], tile_columns=7)
    assert abs(angles[0, 1] - 90.0) < 1e-12
    assert angles[0, 2] < 1e-12
    assert angles[3, 4] == pytest.approx(1e-8, rel=1e-6)


def test_one_pass_of_ranges_of_different_widths_matches_one_tile():
    """Classes sorted by k fall into ranges padded to different widths: every tiling gives the same numbers."""
    rng = np.random.default_rng(5)
    d = 64
    ks = [1, 9, 2, 17, 5, 3, 12, 1, 7, 30, 4]
    bases = [np.linalg.qr(rng.normal(size=(d, k)))[0] for k in ks]
    whole = all_pair_angles([b.copy() for b in bases], keep_matrices=True)
    for tile in (1, 10, 20, 35):
        tiled = all_pair_angles([b.copy() for b in bases], keep_matrices=True, tile_columns=tile)
        np.testing.assert_allclose(tiled.angle_matrix, whole.angle_matrix, rtol=0, atol=1e-10)
        np.testing.assert_allclose(tiled.affinity_matrix, whole.affinity_matrix, rtol=1e-12, atol=1e-15)


def test_an_empty_basis_leaves_the_other_pairs_exact():
    """A class whose basis has no column (k = 0) shares no direction with any other; the other pairs are unaffected."""
    rng = np.random.default_rng(9)
    d = 12
    bases = [np.zeros((d, 0))] + [np.linalg.qr(rng.normal(size=(d, k)))[0] for k in (2, 3, 1)]
    with np.errstate(invalid="ignore"):  # its affinity, ||P||_F^2 / min(k_a, k_b), is 0/0: nan, as before
        r = all_pair_angles(bases, keep_matrices=True, tile_columns=4)
    assert list(r.angle_matrix[0, 1:]) == [90.0, 90.0, 90.0]
    assert np.isnan(r.affinity_matrix[0, 1:]).all()
    for i, j in itertools.combinations(range(1, 4), 2):
        assert abs(r.angle_matrix[i, j] - reference_angle(bases[i], bases[j])[0]) <= ATOL_DEGREES
