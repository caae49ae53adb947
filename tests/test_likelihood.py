"""Probability-flow ODE likelihood against the exact log-density of a Gaussian mixture."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import likelihood
from diffmem import sde as sde_lib
from diffmem.data import toy

MIX = toy.GaussianMixture.isotropic(jnp.array([[1.0, 0.0], [-0.5, 0.8]]), jnp.array([0.3, 0.2]))


@pytest.mark.parametrize("t_eval", [1e-3, 0.05, 0.15, 0.5])
def test_exact_divergence_matches_closed_form(x64, t_eval):
    sde = sde_lib.VESDE(sigma_max=3.0, t_min=1e-3)
    x = jax.random.normal(jax.random.key(0), (8, 2), jnp.float64)
    run = jax.jit(functools.partial(likelihood.log_likelihood, MIX.score_fn(sde), sde, t_eval=t_eval, rtol=1e-8,
                                    atol=1e-8, prior_logp=lambda z: MIX.logp_t(z, 1.0, sde)))
    np.testing.assert_allclose(run(x), MIX.logp_t(x, t_eval, sde), atol=1e-3)


def test_vp_and_denoiser_route(x64):
    vp = sde_lib.VPSDE(t_min=1e-3)
    x = jax.random.normal(jax.random.key(1), (5, 2), jnp.float64)
    ll = likelihood.log_likelihood(None, vp, x, denoiser=MIX.denoiser, t_eval=0.1, rtol=1e-8, atol=1e-8,
                                   prior_logp=lambda z: MIX.logp_t(z, 1.0, vp))
    np.testing.assert_allclose(ll, MIX.logp_t(x, 0.1, vp), atol=1e-3)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(x64, probe):
    sde = sde_lib.VESDE(sigma_max=3.0, t_min=1e-3)
    x = jnp.tile(jnp.array([[0.3, -0.4]]), (400, 1))  # 400 independent probe draws at one point
    est = likelihood.log_likelihood(MIX.score_fn(sde), sde, x, t_eval=0.05, divergence="hutchinson", probe=probe,
                                    key=jax.random.key(3), rtol=1e-6, atol=1e-6,
                                    prior_logp=lambda z: MIX.logp_t(z, 1.0, sde))
    exact = float(MIX.logp_t(x[:1], 0.05, sde)[0])
    se = float(jnp.std(est)) / np.sqrt(len(est))
    assert float(jnp.std(est)) > 0
    assert abs(float(jnp.mean(est)) - exact) < 4 * se + 1e-4


def test_bad_arguments():
    sde = sde_lib.VESDE()
    with pytest.raises(ValueError, match="exact' or 'hutchinson"):
        likelihood.log_likelihood(MIX.score_fn(sde), sde, jnp.zeros((1, 2)), divergence="nope")
    with pytest.raises(ValueError, match="needs a `key`"):
        likelihood.log_likelihood(MIX.score_fn(sde), sde, jnp.zeros((1, 2)), divergence="hutchinson")
