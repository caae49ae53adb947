"""diffmem.stats: the percentile bootstrap against the binomial standard error of a fraction, and
equal to the resampling the training-time and K-sweep studies used before it was shared."""
import math

import numpy as np
import pytest

from diffmem import stats
from diffmem.errors import InputError

NAMES = ("memorized", "spurious", "generalized")


def test_the_bootstrap_of_a_fraction_has_the_binomial_standard_error():
    n, p = 400, 0.3
    flags = np.zeros(n)
    flags[: int(p * n)] = 1.0  # the observed fraction is exactly p
    b = stats.bootstrap(flags, num=4000, seed=3)
    se = math.sqrt(p * (1 - p) / n)  # 0.0229
    assert b["mean"] == pytest.approx(p, abs=1e-15)
    assert b["se"] == pytest.approx(se, rel=0.05)
    assert b["lo"] == pytest.approx(p - 1.96 * se, abs=0.15 * se)
    assert b["hi"] == pytest.approx(p + 1.96 * se, abs=0.15 * se)
    assert b["replicates"].shape == (4000,)
    labels = np.repeat([0, 1, 2], [120, 80, 200])  # fractions 0.3, 0.2, 0.5
    ci = stats.bootstrap_fractions(labels, NAMES, num=4000, seed=3)
    for name, f in zip(NAMES, (0.3, 0.2, 0.5)):
        half = 1.96 * math.sqrt(f * (1 - f) / n)
        assert ci[name][0] == pytest.approx(f - half, abs=0.15 * half)
        assert ci[name][1] == pytest.approx(f + half, abs=0.15 * half)


def test_same_numbers_as_the_resampling_it_replaces():
    rng = np.random.default_rng(0)
    flags = (rng.random(300) < 0.4).astype(np.float64)
    # training_time.bootstrap before: mean of flags over index resamples, seeded by (seed, K, step)
    seed = [0, 16, 2000]
    reps = flags[np.random.default_rng(seed).integers(0, 300, size=(500, 300))].mean(axis=1)
    a = (1.0 - 0.95) / 2.0
    lo, hi = np.quantile(reps, [a, 1.0 - a])
    b = stats.bootstrap(flags, num=500, seed=seed)
    np.testing.assert_array_equal(b["replicates"], reps)
    assert (b["mean"], b["se"], b["lo"], b["hi"]) == (flags.mean(), reps.std(ddof=1), lo, hi)
    # k_sweep.bootstrap_fractions before: the same index resamples for all classes
    labels = rng.choice(3, size=250, p=[0.2, 0.3, 0.5]).astype(np.int8)
    q = ((1 - 0.95) / 2, (1 + 0.95) / 2)
    boot = labels[np.random.default_rng(0).integers(0, 250, (1000, 250))]
    want = {c: tuple(float(v) for v in np.quantile(np.mean(boot == i, axis=1), q))
            for i, c in enumerate(NAMES)}
    assert stats.bootstrap_fractions(labels, NAMES) == want
    # one class of the fractions is the bootstrap of its indicator
    b = stats.bootstrap((labels == 1).astype(float), num=1000, seed=0)
    assert stats.bootstrap_fractions(labels, NAMES)["spurious"] == (b["lo"], b["hi"])


def test_fractions_edge_cases():
    assert stats.bootstrap_fractions(np.zeros(50, int), NAMES)["spurious"] == (0.0, 0.0)
    labels = np.array([0, 1, 2, 2])
    once = stats.bootstrap_fractions(labels, NAMES, seed=7)
    assert stats.bootstrap_fractions(labels, NAMES, seed=7) == once
    with pytest.raises(InputError, match="class indices"):
        stats.bootstrap_fractions(np.array([0, 5]), NAMES)
    with pytest.raises(InputError, match="non-empty"):
        stats.bootstrap_fractions(np.array([], int), NAMES)
    with pytest.raises(InputError, match="non-empty"):
        stats.bootstrap(np.array([]))
    with pytest.raises(InputError, match="level"):
        stats.bootstrap(np.ones(3), level=1.0)
    b = stats.bootstrap(np.arange(6.0).reshape(3, 2), num=200)  # a statistic with a shape
    assert b["mean"].tolist() == [2.0, 3.0] and b["lo"].shape == (2,)
    assert b["replicates"].shape == (200, 2)
