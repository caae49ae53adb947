"""Hutchinson probes are each example's own: an estimate depends on the example's seed, not on its
batch, and the probe errors of different examples are independent (a batch mean averages them
out)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import likelihood
from diffmem import sde as sde_lib
from diffmem.data import toy

MIX = toy.GaussianMixture.isotropic(jnp.array([[1.0, 0.0], [-0.5, 0.8]]), jnp.array([0.3, 0.2]))
SDE = sde_lib.VESDE(sigma_max=3.0, t_min=1e-3)


def _run(probe="gaussian", **kw):
    return jax.jit(functools.partial(
        likelihood.log_likelihood, MIX.score_fn(SDE), SDE, t_eval=0.05, divergence="hutchinson",
        probe=probe, rtol=1e-6, atol=1e-6, prior_logp=lambda z: MIX.logp_t(z, 1.0, SDE), **kw))


def test_estimate_depends_on_the_examples_seed_not_its_batch(x64):
    run = _run("rademacher")
    key = jax.random.key(5)
    x = jax.random.normal(jax.random.key(1), (3, 2), jnp.float64)
    seeds = np.array([10, 11, 12])
    batch = np.asarray(run(x, key=key, seeds=seeds))
    for i in range(len(x)):  # alone, with its seed
        alone = np.asarray(run(x[i:i + 1], key=key, seeds=seeds[i:i + 1]))
        np.testing.assert_allclose(alone, batch[i:i + 1], rtol=1e-10, atol=1e-10)
    perm = np.array([2, 0, 1])  # the same examples at other positions
    other = np.asarray(run(x[perm], key=key, seeds=seeds[perm]))
    np.testing.assert_allclose(other, batch[perm], rtol=1e-10, atol=1e-10)
    # Without seeds, row i's seed is its index.
    np.testing.assert_allclose(np.asarray(run(x, key=key)),
                               np.asarray(run(x, key=key, seeds=np.arange(3))), rtol=1e-10,
                               atol=1e-10)


def test_identical_examples_get_different_probes(x64):
    run = _run("gaussian")
    x = jnp.tile(jnp.array([[0.3, -0.4]], jnp.float64), (4, 1))
    est = np.asarray(run(x, key=jax.random.key(0), seeds=np.arange(4)))
    assert len(np.unique(est)) == 4  # shared probes (the old behaviour) gave four equal numbers
    shared = np.asarray(run(x, key=jax.random.key(0), seeds=np.zeros(4, np.int64)))
    np.testing.assert_allclose(shared, shared[0], rtol=1e-12)  # equal seeds share probes


def test_probe_errors_are_uncorrelated_across_examples(x64):
    """Over 200 draws of the key, the estimation errors (estimate - exact log-density) of two
    examples of one batch are uncorrelated (|r| < 0.25; the standard error of r is ~0.07), so the
    error of a batch mean shrinks like 1/sqrt(B). Equal seeds (shared probes, as before) correlate
    them fully."""
    x = jnp.array([[0.3, -0.4], [0.3, -0.4], [1.0, 0.2]], jnp.float64)
    exact = np.asarray(MIX.logp_t(x, 0.05, SDE))
    keys = jax.random.split(jax.random.key(3), 200)
    one = _run("gaussian")
    per_key = jax.jit(lambda seeds: jax.vmap(lambda k: one(x, key=k, seeds=seeds))(keys))
    err = np.asarray(per_key(jnp.arange(3))) - exact  # (200, 3)
    r = np.corrcoef(err.T)
    assert np.all(np.abs(r[np.triu_indices(3, 1)]) < 0.25), r
    assert np.all(np.abs(err.mean(0)) < 4 * err.std(0) / np.sqrt(len(err)) + 1e-4)  # still unbiased
    shared = np.asarray(per_key(jnp.zeros(3, jnp.int32))) - exact
    assert np.corrcoef(shared[:, 0], shared[:, 1])[0, 1] > 0.999
    assert np.corrcoef(shared[:, 0], shared[:, 2])[0, 1] > 0.5


def test_bad_seeds():
    with pytest.raises(ValueError, match="one integer per example"):
        likelihood.log_likelihood(MIX.score_fn(SDE), SDE, jnp.zeros((2, 2)),
                                  divergence="hutchinson", key=jax.random.key(0),
                                  seeds=np.arange(3))
