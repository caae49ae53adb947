"""diffmem.metrics.neighbours: exact unsquared L2 nearest neighbours against a float64 numpy twin;
the metrics that take unsquared distances refuse the k-NN's squared ones."""
import numpy as np
import pytest

from diffmem.errors import InputError
from diffmem.metrics import classify, distances, memorization, neighbours


def twin(q, r, k, exclude_self=False):
    """Float64 brute force: all pairwise L2 distances, stable sort (ties by the smaller index)."""
    q = np.asarray(q, np.float64).reshape(len(q), -1)
    r = np.asarray(r, np.float64).reshape(len(r), -1)
    d = np.sqrt(np.sum((q[:, None] - r[None]) ** 2, axis=-1))
    if exclude_self:
        d[np.arange(len(q)), np.arange(len(q))] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), order


# host_work: the host's float64 ranking, or 0: the tiled engine
@pytest.mark.parametrize("host_work", [neighbours.HOST_WORK, 0])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_equals_the_float64_twin(host_work, exclude_self):
    rng = np.random.default_rng(0)
    refs = rng.normal(size=(40, 3, 2, 2)).astype(np.float32)
    queries = refs[:25] if exclude_self else rng.normal(size=(25, 3, 2, 2)).astype(np.float32)
    got = neighbours.nearest(queries, refs, 3, exclude_self=exclude_self, host_work=host_work)
    want_d, want_i = twin(queries, refs, 3, exclude_self)
    assert got.distances.shape == got.indices.shape == (25, 3)
    assert got.distances.dtype == np.float64 and got.indices.dtype == np.int64
    np.testing.assert_array_equal(got.indices, want_i)
    np.testing.assert_allclose(got.distances, want_d, rtol=1e-12)


@pytest.mark.parametrize("host_work", [neighbours.HOST_WORK, 0])
def test_copies_are_at_exactly_zero_and_ties_go_to_the_smaller_index(host_work):
    rng = np.random.default_rng(1)
    refs = (10 + rng.normal(size=(12, 64))).astype(np.float32)  # the GEMM form is ~1e-3 off
    refs[7] = refs[3]  # a duplicate: the copy's two neighbours tie at 0
    d, i = neighbours.nearest(refs[[3, 5]], refs, 2, host_work=host_work)
    assert d[0, 0] == 0.0 and d[0, 1] == 0.0 and list(i[0]) == [3, 7]
    assert d[1, 0] == 0.0 and i[1, 0] == 5
    # exclude_self drops the query's own row only, not its duplicate
    d, i = neighbours.nearest(refs[:8], refs, 1, exclude_self=True, host_work=host_work)
    assert i[3, 0] == 7 and i[7, 0] == 3 and d[3, 0] == 0.0


def test_one_example_or_a_batch():
    rng = np.random.default_rng(2)
    refs = rng.normal(size=(9, 4, 4, 1))
    one = neighbours.nearest(refs[2] + 0.01, refs, 2)
    batch = neighbours.nearest((refs[2] + 0.01)[None], refs, 2)
    assert one.distances.shape == one.indices.shape == (2,)
    np.testing.assert_array_equal(one.distances, batch.distances[0])
    np.testing.assert_array_equal(one.indices, batch.indices[0])
    assert one.indices[0] == 2 and one.distances[0] == pytest.approx(0.04)  # sqrt(16 * 0.01^2)


@pytest.mark.parametrize("queries,match", [
    (np.zeros((3, 4, 4)), r"one example of shape \(4, 4, 1\) or a batch"),
    (np.zeros((4, 4, 2)), r"one example of shape \(4, 4, 1\)"),
    (np.zeros((2, 3, 4, 4, 1)), "got shape"),
])
def test_wrong_shapes_name_the_expected_shape(queries, match):
    with pytest.raises(InputError, match=match):
        neighbours.nearest(queries, np.zeros((5, 4, 4, 1)))


def test_bad_k_and_exclude_self():
    refs = np.zeros((5, 3))
    with pytest.raises(InputError, match=r"k = 5 must be an integer in \[1, 4\]"):
        neighbours.nearest(refs, refs, 5, exclude_self=True)
    with pytest.raises(InputError, match="needs a batch"):
        neighbours.nearest(refs[0], refs, exclude_self=True)
    with pytest.raises(InputError, match="NaN"):
        neighbours.nearest(np.full(3, np.nan), refs)


def test_metrics_refuse_the_knns_squared_distances():
    """The bug class: squared k-NN distances fed to metrics defined on L2. Here d1 = 1, d2 = 2: the
    L2 ratio is 1/2 (not memorized) but the squared ratio 1/4 < 1/3 (memorized)."""
    train = np.array([[1.0, 0.0], [-2.0, 0.0], [5.0, 5.0]], np.float32)
    samples = np.zeros((4, 2), np.float32)
    sq, _ = distances.knn(samples, train, 2)
    with pytest.raises(InputError, match="squared distances from distances.knn"):
        memorization.memorization_ratio(sq[:, 0], sq[:, 1])
    with pytest.raises(InputError, match="squared"):
        classify.classify(sq[:, 0], sq[:, 1])
    root = np.sqrt(sq)  # arithmetic gives plain arrays
    assert memorization.memorization_ratio(root[:, 0], root[:, 1]) == 0.0
    d = neighbours.nearest(samples, train, 2).distances
    np.testing.assert_array_equal(d, [[1.0, 2.0]] * 4)
    assert memorization.memorization_ratio(d[:, 0], d[:, 1]) == 0.0
    assert memorization.ratio_of(samples, train) == 0.0
    assert memorization.ratio_of(samples, train[:1]) is None


@pytest.mark.parametrize("host_work", [neighbours.HOST_WORK, 0])
def test_most_similar_is_the_argmax_of_cosines_with_zero_rows_at_zero(host_work):
    rng = np.random.default_rng(3)
    refs = rng.normal(size=(30, 2, 3))
    refs[4] = 0.0  # cosine 0 with everything
    queries = np.concatenate([refs[[7, 9]] * 2.5, rng.normal(size=(20, 2, 3)), np.zeros((1, 2, 3))])
    queries[5] = -refs[5]  # cosine -1 with refs[5]
    q, r = queries.reshape(23, -1), refs.reshape(30, -1)
    cos = (q @ r.T) / np.maximum(np.linalg.norm(q, axis=1), 1e-300)[:, None]
    cos /= np.maximum(np.linalg.norm(r, axis=1), 1e-300)[None]  # zero rows: 0
    got = neighbours.most_similar(queries, refs, host_work=host_work)
    np.testing.assert_array_equal(got.indices, cos.argmax(1))  # argmax: the first of equal maxima
    np.testing.assert_allclose(got.cosines, cos.max(1), rtol=1e-12, atol=1e-15)
    assert list(got.indices[:2]) == [7, 9] and got.cosines[0] == pytest.approx(1.0, abs=1e-14)
    # a query whose cosines are all negative but for the zero row: the zero row wins, at 0
    three = np.array([[1.0, 1.0], [0.0, 0.0], [-1.0, 1.0]])
    got = neighbours.most_similar(np.array([[0.0, -1.0]]), three)
    assert (got.cosines[0], got.indices[0]) == (0.0, 1)
