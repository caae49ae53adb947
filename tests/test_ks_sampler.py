"""Kadkhodaie-Simoncelli sampler: the closed-form noise recursion, the literal update, one noise stream per seed."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import sampling


def test_recursion_counts_match_the_notes():
    assert [sampling.ks_recursion_iterations(1.0, beta=b) for b in (0.01, 0.1, 0.5)] == [662, 128, 48]


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_iterations_follow_the_closed_form_recursion(beta):
    # One training image: the empirical optimal denoiser is D(y) = x* for every y, so y_t - x* has noise
    # sigma_t = (1 - beta h_t) sigma_{t-1} up to O(1/sqrt(N)) fluctuations.
    shape = (48, 48, 1)
    x_star = jnp.asarray(np.random.default_rng(0).uniform(0, 1, shape), jnp.float32)
    denoiser = lambda y, s: jnp.broadcast_to(x_star, y.shape)
    seeds = np.array([3, 11])
    run = jax.jit(lambda s: sampling.kadkhodaie_simoncelli(denoiser, shape, s, beta=beta))
    r = run(seeds)
    assert bool(r.converged.all())
    np.testing.assert_allclose(r.samples, np.broadcast_to(x_star, (2,) + shape), atol=1e-6)
    for i, seed in enumerate(seeds):
        y0 = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 0), shape)
        s0 = float(jnp.linalg.norm(y0 - x_star) / math.sqrt(y0.size))
        expected = sampling.ks_recursion_iterations(s0, beta=beta)
        assert abs(int(r.iterations[i]) - expected) <= 2, (int(r.iterations[i]), expected)


def test_literal_update_and_shared_noise_stream_for_two_models():
    # Linear residuals f(y) = c y: three updates reconstructed in numpy from the documented noise stream
    # (y0 from fold_in(key, 0), z_t from fold_in(key, t)); two models with the same seeds use the same stream.
    shape, h0, beta, T = (4, 4, 1), 0.3, 0.2, 3
    seed = 7
    key = jax.random.key(seed)
    y0 = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), shape), np.float64)
    zs = [np.asarray(jax.random.normal(jax.random.fold_in(key, t), shape), np.float64) for t in range(1, T + 1)]
    for c in (0.3, 0.6):
        r = sampling.kadkhodaie_simoncelli(lambda y, s: (1 - c) * y, shape, np.array([seed]), h0=h0, beta=beta,
                                           sigma_L=1e-6, max_iters=T)
        y = y0.copy()
        for t in range(1, T + 1):
            h = h0 * t / (1 + h0 * (t - 1))
            d = c * y
            sigma = np.linalg.norm(d) / 4.0
            y = y - h * d + sigma * np.sqrt((1 - beta * h) ** 2 - (1 - h) ** 2) * zs[t - 1]
        assert int(r.iterations[0]) == T and not bool(r.converged[0])
        np.testing.assert_allclose(r.samples[0], (1 - c) * y, rtol=1e-5, atol=1e-6)


def test_sample_depends_only_on_its_seed_and_is_registered():
    shape = (4, 4, 1)
    d = lambda y, s: 0.5 * y
    both = sampling.kadkhodaie_simoncelli(d, shape, np.array([1, 2]), beta=0.5, max_iters=20)
    one = sampling.kadkhodaie_simoncelli(d, shape, np.array([2]), beta=0.5, max_iters=20)
    np.testing.assert_allclose(both.samples[1], one.samples[0], atol=1e-6)
    assert "ks" in sampling.SAMPLERS and sampling.SAMPLERS["ks"].settings["h0"] == 0.01
