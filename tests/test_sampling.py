"""Samplers driven by exact Gaussian-mixture scores reproduce the mixture's moments."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import sampling
from diffmem import sde as sde_lib
from diffmem.data import toy

MIX = toy.GaussianMixture.isotropic(jnp.array([[1.0, 0.0], [-0.5, 0.8]]), jnp.array([0.3, 0.2]),
                                    weights=jnp.array([0.6, 0.4]))


def check_moments(x, mix, z=4.5):
    """Mean and covariance within z standard errors of the exact ones (errors from the sample count)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    mean, cov = np.asarray(mix.mean()), np.asarray(mix.covariance())
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < z * se_mean), (x.mean(0), mean)
    emp = np.cov(x.T)
    # Var of a sample covariance entry ~ (cov_ii cov_jj + cov_ij^2) / n (Gaussian approximation, inflated x2
    # for the mixture's heavier tails).
    se_cov = np.sqrt(2 * (np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(emp - cov) < z * se_cov), (emp, cov)


@pytest.fixture(scope="module")
def ve():
    return sde_lib.VESDE(sigma_max=3.0, t_min=1e-3)


def exact_start(seeds, ve):
    """Start from the exact noisy marginal at t = 1 (so only the sampler's error is tested)."""
    return MIX.noisy(ve.sigma(1.0)).sample(jax.random.key(99), len(seeds))


def test_euler_maruyama_matches_mixture_moments(ve):
    seeds = jnp.arange(4000)
    x = jax.jit(lambda s: sampling.euler_maruyama(MIX.score_fn(ve), ve, exact_start(s, ve), s, 1000))(seeds)
    check_moments(x, MIX)


def test_probability_flow_ode_matches_mixture_moments(ve):
    seeds = jnp.arange(4000)
    x = jax.jit(lambda s: sampling.probability_flow_ode(MIX.score_fn(ve), ve, exact_start(s, ve)))(seeds)
    check_moments(x, MIX)


def test_vp_euler_maruyama_from_prior():
    vp = sde_lib.VPSDE(t_min=1e-3)
    seeds = jnp.arange(4000)
    x = jax.jit(lambda s: sampling.euler_maruyama(MIX.score_fn(vp), vp, sampling.initial_noise(s, (2,)), s, 1000))(seeds)
    check_moments(x, MIX)


def test_samples_depend_only_on_their_seeds(ve):
    run = jax.jit(lambda s: sampling.euler_maruyama(MIX.score_fn(ve), ve, sampling.tutorial_init(s, 2, ve), s, 50))
    full = np.asarray(run(jnp.arange(16)))
    np.testing.assert_array_equal(full[:8], np.asarray(run(jnp.arange(8))))
    np.testing.assert_array_equal(full[8:], np.asarray(run(jnp.arange(8, 16))))
    start = sampling.tutorial_init(jnp.arange(5), 2, ve)
    np.testing.assert_allclose(np.linalg.norm(start, axis=1), 3.0, rtol=1e-6)
