"""diffmem.metrics.distances: tiled k-NN against float64 brute force (ties included), splits,
meshes."""
import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from diffmem.metrics import distances

TILES = dict(query_tile=8, ref_tile=16)  # small tiles: several blocks, a clamped last tile, padding


def brute_force(q, r, k, offset=None, start=0, ref_start=0):
    """Float64 all-pairs distances, self excluded by index, stable sort (ties by smaller index)."""
    d = np.sum((q[:, None, :].astype(np.float64) - r[None].astype(np.float64)) ** 2, axis=-1)
    if offset is not None:
        for i in range(len(q)):
            j = start + i + offset - ref_start
            if 0 <= j < len(r):
                d[i, j] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), order + ref_start


def integer_set(seed, n, dim=12):
    """Small integers: float32 GEMM distances are exact, and many distances tie (duplicates
    included)."""
    return np.random.default_rng(seed).integers(-2, 3, (n, dim)).astype(np.float32)


@pytest.mark.parametrize("n,m,k", [(37, 53, 5), (5, 7, 7), (20, 16, 5)])
def test_equals_brute_force_with_ties(n, m, k):
    q, r = integer_set(0, n), integer_set(1, m)
    r[3] = r[1]  # an exact duplicate pair in the references
    d, i = distances.knn(q, r, k, **TILES)
    bd, bi = brute_force(q, r, k)
    assert d.dtype == np.float32 and i.shape == (n, k)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_array_equal(d, bd)
    assert np.sum(bd[:, :-1] == bd[:, 1:]) > 0  # the test really has ties


@pytest.mark.parametrize("offset", [0, 11])
def test_self_excluded_by_index_not_distance(offset):
    r = integer_set(2, 45)
    # a duplicate of query 2's own reference: must still be found, at distance 0
    r[7] = r[offset + 2]
    q = r[offset:offset + 30]
    d, i = distances.knn(q, r, 4, exclude_self_offset=offset, **TILES)
    bd, bi = brute_force(q, r, 4, offset)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_array_equal(d, bd)
    assert not np.any(i == np.arange(30)[:, None] + offset)
    assert i[2, 0] == 7 and d[2, 0] == 0


def test_images_flattened_and_pixel_space():
    rng = np.random.default_rng(3)
    q = rng.integers(-3, 4, (9, 2, 2, 3)).astype(np.float32)
    r = rng.integers(-3, 4, (21, 2, 2, 3)).astype(np.float32)
    d, i = distances.knn(q, r, 5, **TILES)
    bd, bi = brute_force(q.reshape(9, -1), r.reshape(21, -1), 5)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_array_equal(d, bd)


def test_fewer_candidates_padded_with_inf_and_minus_one():
    r = integer_set(4, 6)
    d, i = distances.knn(r, r, 6, exclude_self_offset=0, **TILES)
    assert np.all(i[:, -1] == -1) and np.all(np.isinf(d[:, -1]))
    bd, bi = brute_force(r, r, 5, 0)
    np.testing.assert_array_equal(i[:, :5], bi)
    assert distances.num_candidates(6, start=0, stop=6, exclude_self_offset=0) == 5


def random_float_set(seed, n, dim=12):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_query_splits_merge_to_bit_identical_result():
    s = random_float_set(5, 61)
    full = distances.knn(s, s, 5, exclude_self_offset=0, **TILES)
    bounds = [0, 13, 16, 29, 45, 61]  # padded to 16, 8, 16, 16, 16 query rows
    parts = [(a, *distances.knn(s, s, 5, start=a, stop=b, exclude_self_offset=0, **TILES))
             for a, b in zip(bounds[:-1], bounds[1:])]
    merged = distances.merge_knn(parts[::-1])  # any order
    np.testing.assert_array_equal(merged[0], full[0])
    np.testing.assert_array_equal(merged[1], full[1])
    with pytest.raises(ValueError, match="gap"):
        distances.merge_knn([parts[0], parts[2]])
    with pytest.raises(ValueError, match="overlap"):
        distances.merge_knn(parts + [parts[1]])


def test_ref_splits_merge_to_bit_identical_result():
    q, r = random_float_set(6, 29), random_float_set(7, 56)
    for offset in (None, 20):
        full = distances.knn(q, r, 5, exclude_self_offset=offset, **TILES)
        bounds = [0, 3, 19, 35, 56]  # a part smaller than k, parts not aligned to tiles
        parts = [
            distances.knn(
                q, r[a:b], min(5, b - a), ref_start=a, exclude_self_offset=offset, **TILES
            )
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
        merged = distances.merge_knn_refs(parts, k=5)
        np.testing.assert_array_equal(merged[1], full[1])
        np.testing.assert_array_equal(merged[0], full[0])
    with pytest.raises(ValueError, match="disjoint"):
        distances.merge_knn_refs([full, full])


def test_mesh_of_1_and_8_devices_equal_unsharded():
    s = random_float_set(8, 75)
    full = distances.knn(s, s, 5, exclude_self_offset=0, **TILES)
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = Mesh(np.array(devices), ("data",))
        d, i = distances.knn(s, s, 5, exclude_self_offset=0, mesh=mesh, **TILES)
        np.testing.assert_array_equal(i, full[1])
        np.testing.assert_array_equal(d, full[0])
    assert len(jax.devices()) == 8


def test_float_data_close_to_float64():
    q, r = random_float_set(9, 16) * 100, random_float_set(10, 40) * 100
    d, i = distances.knn(q, r, 5, **TILES)
    bd, bi = brute_force(q, r, 5)
    np.testing.assert_allclose(d, bd, rtol=1e-5, atol=1e-2)
    np.testing.assert_array_equal(i, bi)


def test_input_validation():
    q, r = integer_set(0, 5), integer_set(1, 7)
    with pytest.raises(ValueError, match="k = 8"):
        distances.knn(q, r, 8)
    with pytest.raises(ValueError, match="k = 0"):
        distances.knn(q, r, 0)
    with pytest.raises(ValueError, match="same features"):
        distances.knn(q, r[:, :4], 2)
    with pytest.raises(ValueError, match="Query range"):
        distances.knn(q, r, 2, start=3, stop=3)
    with pytest.raises(ValueError, match="Query range"):
        distances.knn(q, r, 2, stop=6)
    bad = r.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        distances.knn(q, bad, 2)
    with pytest.raises(ValueError, match="candidates"):
        distances.merge_knn_refs([(np.zeros((2, 2)), np.zeros((2, 2), int))], k=3)
