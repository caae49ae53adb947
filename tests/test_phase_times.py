"""Speciation and collapse times from data: closed forms (MNIST's published Lambda -> index 446,
isotropic t_C) and the Monte-Carlo excess entropy against the isotropic-Gaussian formula."""
import math

import numpy as np
import pytest

from diffmem.metrics import phase_times as pt


def test_speciation_time_of_a_known_covariance():
    # Two points +-sqrt(L) e_1 (plus an offset): the mean-centred covariance has largest eigenvalue
    # L = 7.66 (MNIST).
    lam = 7.66
    x = np.zeros((2, 5)) + 3.0
    x[0, 1] += math.sqrt(lam)
    x[1, 1] -= math.sqrt(lam)
    out = pt.speciation_time(x)
    assert out["lambda"] == pytest.approx(lam, rel=1e-12)
    # the published table
    assert out["t_s"] == pytest.approx(1.018, abs=1e-3) and out["index"] == 446
    assert pt.ou_time_of_ddpm_index(446) == pytest.approx(1.0182, abs=1e-4)
    assert pt.ddpm_index_of_ou_time(pt.ou_time_of_ddpm_index(300)) == 300
    # Many-dimensional data: the Gram route (n < N) gives the covariance's eigenvalue.
    y = np.random.default_rng(0).normal(size=(6, 40))
    assert pt.largest_eigenvalue(y) == pytest.approx(
        np.linalg.eigvalsh(np.cov(y.T, bias=True))[-1], rel=1e-10
    )


def test_gaussian_collapse_time_closed_forms():
    for var, n, dim in ((1.0, 1000, 10), (0.3, 50, 64), (4.0, 10**6, 3)):
        t_c = pt.isotropic_collapse_time(var, n, dim)
        assert pt.gaussian_collapse_time(np.full(dim, var), n) == pytest.approx(t_c, rel=1e-9)
        assert pt.isotropic_excess_entropy_ratio(t_c, var, n, dim) == pytest.approx(0.0, abs=1e-9)
        assert pt.isotropic_excess_entropy_ratio(t_c * 1.5, var, n, dim) > 0
    # Only the nonzero eigenvalues given: dim pads the rest with zeros.
    lam = np.array([3.0, 1.0, 0.5])
    assert pt.gaussian_collapse_time(lam, 40, dim=8) == pytest.approx(
        pt.gaussian_collapse_time(np.r_[lam, np.zeros(5)], 40), rel=1e-9)


def test_monte_carlo_excess_entropy_matches_isotropic_gaussian(x64):
    n, dim = 1000, 10
    x = np.random.default_rng(1).normal(size=(n, dim))
    ts = np.r_[0.02, np.linspace(0.05, 0.6, 12), 1.0, 2.5]
    out = pt.collapse_time(x, ts, num_draws=1500)
    ratio = out["f"] / out["alpha"]
    far = ts >= 0.6
    np.testing.assert_allclose(
        ratio[far], pt.isotropic_excess_entropy_ratio(ts[far], 1.0, n, dim), atol=0.04
    )
    assert abs(ratio[0]) < 0.02                           # collapsed: n separate Gaussians
    # 0.26; finite n, N round the corner, t_C lies below
    t_c = pt.isotropic_collapse_time(1.0, n, dim)
    assert t_c - 0.12 < out["t_c"] < t_c + 0.03


def test_crossing_time():
    ts = np.array([0.1, 0.2, 0.3, 0.4])
    assert pt.crossing_time(ts, [0.0, 0.0, 0.5, 1.0], 0.25) == pytest.approx(0.25)
    assert pt.crossing_time(ts, [0.6, 0.7, 0.8, 0.9], 0.25) == 0.1
    assert math.isnan(pt.crossing_time(ts, [0.0] * 4, 0.25))
