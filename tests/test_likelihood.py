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
    run = jax.jit(
        functools.partial(likelihood.log_likelihood, MIX.score_fn(sde), sde, t_eval=t_eval,
                          rtol=1e-8, atol=1e-8, prior_logp=lambda z: MIX.logp_t(z, 1.0, sde))
    )
    np.testing.assert_allclose(run(x), MIX.logp_t(x, t_eval, sde), atol=1e-3)


def test_vp_and_denoiser_route(x64):
    vp = sde_lib.VPSDE(t_min=1e-3)
    x = jax.random.normal(jax.random.key(1), (5, 2), jnp.float64)
    ll = likelihood.log_likelihood(None, vp, x, denoiser=MIX.denoiser, t_eval=0.1, rtol=1e-8,
                                   atol=1e-8, prior_logp=lambda z: MIX.logp_t(z, 1.0, vp))
    np.testing.assert_allclose(ll, MIX.logp_t(x, 0.1, vp), atol=1e-3)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(x64, probe):
    sde = sde_lib.VESDE(sigma_max=3.0, t_min=1e-3)
    x = jnp.array([[0.3, -0.4]])
    run = lambda key: likelihood.log_likelihood(MIX.score_fn(sde), sde, x, t_eval=0.05,
                                                divergence="hutchinson", probe=probe, key=key,
                                                rtol=1e-6, atol=1e-6,
                                                prior_logp=lambda z: MIX.logp_t(z, 1.0, sde))[0]
    # 400 independent probe draws
    est = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(3), 400))
    exact = float(MIX.logp_t(x, 0.05, sde)[0])
    se = float(jnp.std(est)) / np.sqrt(len(est))
    assert float(jnp.std(est)) > 0
    assert abs(float(jnp.mean(est)) - exact) < 4 * se + 1e-4


def test_each_example_has_its_own_solve_and_statistics():
    """The solver takes the same steps for x_i whether it is solved alone or beside other rows
    (which take other step counts), and log p(x_i) is the same up to float32 rounding of the batched
    network kernels (one adaptive solve for the whole batch, as before, gave every row the batch's
    steps)."""
    sde = sde_lib.VESDE(sigma_max=3.0, t_min=1e-3)
    x = jnp.array([[0.3, -0.4], [8.0, 8.0], [1.0, 0.1], [-0.5, 0.8], [0.0, 0.0]], jnp.float32)
    run = jax.jit(
        functools.partial(likelihood.log_likelihood, MIX.score_fn(sde), sde, t_eval=1e-3, rtol=1e-5,
                          atol=1e-5, prior_logp=lambda z: MIX.logp_t(z, 1.0, sde),
                          return_stats=True)
    )
    log_p, stats = run(x)
    assert set(stats) == {"num_steps", "num_accepted_steps", "num_rejected_steps", "result"}
    assert all(v.shape == (5,) for v in stats.values())
    np.testing.assert_array_equal(stats["result"], 0)  # every solve successful
    np.testing.assert_array_equal(
        stats["num_steps"], stats["num_accepted_steps"] + stats["num_rejected_steps"]
    )
    assert len(np.unique(np.asarray(stats["num_steps"]))) > 1  # the rows took different steps
    for i in range(len(x)):
        alone, alone_stats = run(x[i:i + 1])
        np.testing.assert_allclose(alone, log_p[i:i + 1], rtol=1e-6, atol=5e-6)
        for k in stats:
            np.testing.assert_array_equal(alone_stats[k], stats[k][i:i + 1])
    np.testing.assert_allclose(log_p, MIX.logp_t(x, 1e-3, sde), rtol=1e-2, atol=1e-2)


def test_failed_solves_are_reported_per_example_or_raised():
    sde = sde_lib.VESDE(sigma_max=3.0, t_min=1e-3)
    x = jnp.array([[0.3, -0.4], [8.0, 8.0]])
    kwargs = dict(t_eval=0.05, rtol=1e-7, atol=1e-7, max_steps=12)
    _, stats = likelihood.log_likelihood(MIX.score_fn(sde), sde, x, return_stats=True, **kwargs)
    assert np.all(np.asarray(stats["result"]) != 0)  # max_steps reached: reported, not raised
    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(likelihood.log_likelihood(MIX.score_fn(sde), sde, x, **kwargs))


def test_bad_arguments():
    sde = sde_lib.VESDE()
    with pytest.raises(ValueError, match="exact' or 'hutchinson"):
        likelihood.log_likelihood(MIX.score_fn(sde), sde, jnp.zeros((1, 2)), divergence="nope")
    with pytest.raises(ValueError, match="needs a `key`"):
        likelihood.log_likelihood(
            MIX.score_fn(sde), sde, jnp.zeros((1, 2)), divergence="hutchinson"
        )
