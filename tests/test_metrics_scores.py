"""Classification, memorization ratio, EMM search and RP / generalization scores against brute
force."""
import numpy as np
import pytest

from diffmem.metrics import classify, memorization, reproducibility


def test_classify_follows_the_definition():
    d_m = np.array([0.01, 0.05, 0.05, 0.03, 0.2])
    d_s = np.array([0.00, 0.01, 0.50, 0.02, 0.021])
    labels = classify.classify(d_m, d_s, delta_m=0.03, delta_s=0.02)
    np.testing.assert_array_equal(labels, [0, 1, 2, 0, 2])
    assert classify.fractions(labels) == {"memorized": 0.4, "spurious": 0.2, "generalized": 0.4}
    with pytest.raises(ValueError, match="same length"):
        classify.classify(d_m, d_s[:3])


def test_memorization_ratio_brute_force():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 6))
    samples = np.concatenate(
        [train[:10] + 1e-3 * rng.normal(size=(10, 6)), rng.normal(size=(30, 6))]
    )
    d = np.linalg.norm(samples[:, None] - train[None], axis=-1)
    d.sort(axis=1)
    expected = np.mean(d[:, 0] / d[:, 1] < 1 / 3)
    assert memorization.memorization_ratio(d[:, 0], d[:, 1]) == pytest.approx(expected)
    assert memorization.memorization_ratio(d[:10, 0], d[:10, 1]) == 1.0
    assert memorization.max_over_snapshots({100: 0.5, 200: 0.9, 300: 0.9}) == (200, 0.9)
    with pytest.raises(ValueError, match="nearest"):
        memorization.is_memorized(np.array([2.0]), np.array([1.0]))


def test_emm_brackets_and_bisects_reusing_known_runs():
    calls = []

    def ratio_at(k):  # memorization falls below 90% past K = 1234
        calls.append(k)
        return 1.0 if k <= 1234 else 0.2

    out = memorization.find_emm(
        ratio_at, [250, 500, 1000, 2000, 4000], tolerance=0.01, known={250: 1.0}
    )
    assert 250 not in calls and 4000 not in calls
    lo, hi = out["bracket"]
    assert lo <= 1234 < hi and (hi - lo) / lo <= 0.01 and out["emm"] == lo
    assert memorization.find_emm(lambda k: 0.0, [10, 20])["emm"] is None
    assert memorization.find_emm(lambda k: 1.0, [10, 20])["emm"] == 20


def test_rp_and_generalization_scores_brute_force():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 16))
    b = a + rng.normal(scale=np.linspace(0.05, 3, 40)[:, None], size=(40, 16))
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert reproducibility.rp_score(a, b) == pytest.approx(np.mean(cos > 0.6))
    train = rng.normal(size=(100, 16))
    feats = np.concatenate([train[:7] * 2.0, rng.normal(size=(13, 16))])
    best = (reproducibility.normalize(feats) @ reproducibility.normalize(train).T).max(1)
    np.testing.assert_allclose(reproducibility.max_cosine_to_set(feats, train), best, rtol=1e-5)
    assert reproducibility.generalization_score(feats, train) == pytest.approx(
        1 - np.mean(best > 0.6)
    )
    px = reproducibility.pixel_features(rng.normal(size=(3, 4, 4, 1)))
    np.testing.assert_allclose(px.mean(1), 0, atol=1e-6)
