"""Jacobian rank tools: dense jacfwd Jacobian, the 99% Frobenius rule, randomized vs exact, EDM
states."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import sampling
from diffmem.metrics import jacobian


def test_denoiser_jacobian_of_linear_denoiser(x64):
    a = np.random.default_rng(0).normal(size=(12, 12))
    d = lambda x, s: (x.reshape(x.shape[0], -1) @ a.T / (1 + s[:, None] ** 2)).reshape(x.shape)
    j = jacobian.denoiser_jacobian(d, jnp.ones((2, 3, 2)), 0.5)
    assert j.dtype == jnp.float64 and j.shape == (12, 12)
    np.testing.assert_allclose(j, a / 1.25, rtol=1e-12)
    jb = jacobian.batched_jacobians(d, jnp.ones((3, 2, 3, 2)), jnp.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(jb[2], a / 2, rtol=1e-12)


def test_rank_99_rule():
    # 5 equal values reach sqrt(5/6) = 0.913 < 0.99
    assert jacobian.rank_99(np.ones(6)) == 6
    assert jacobian.rank_99([0, 1, 10]) == 1            # 10 / sqrt(101) = 0.995 > 0.99
    assert jacobian.rank_99([10, 2, 0]) == 2            # 10 / sqrt(104) = 0.9806; both: 1.0
    assert jacobian.rank_99(np.r_[np.ones(7), np.zeros(41)]) == 7
    assert jacobian.rank_99(np.zeros(4)) == 0
    # not reached in the top 2: a bound
    assert jacobian.rank_from_partial([3.0, 1.0], frobenius=10.0) == 3
    # a locally constant denoiser: J ~ 0
    noise = 1e-12 * np.random.default_rng(0).normal(size=(8, 8))
    assert jacobian.jacobian_rank(noise) == 0 and jacobian.rank_99(np.linalg.svd(noise)[1]) > 1


def test_randomized_rank_matches_exact(x64):
    rng = np.random.default_rng(1)
    n = 160
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    v, _ = np.linalg.qr(rng.normal(size=(n, n)))
    # ranks 22 and 48: one and two sketch doublings
    for decay in (0.9, 0.96):
        j = (u * decay ** np.arange(n)) @ v.T
        exact = jacobian.jacobian_rank(j, method="exact")
        assert exact == jacobian.rank_99(decay ** np.arange(n))
        assert jacobian.jacobian_rank(j, method="randomized", max_rank=16) == exact


def test_trajectory_states_end_where_edm_heun_ends(x64):
    mean = jnp.linspace(-1, 1, 6)
    d = lambda x, s: (x + s[:, None] ** 2 * mean) / (1 + s[:, None] ** 2)   # data N(mean, I)
    x_T = 80.0 * jax.random.normal(jax.random.key(0), (3, 6), jnp.float64)
    states, sig, final = jacobian.edm_trajectory_states(d, x_T)
    assert states.shape == (18, 3, 6) and sig[0] == 80.0 and abs(sig[-1] - 0.002) < 1e-12
    np.testing.assert_allclose(states[0], x_T)
    np.testing.assert_allclose(final, sampling.edm_heun(d, x_T), rtol=1e-10, atol=1e-10)


def test_rank_vs_snr_of_subspace_gaussian(x64):
    # Data N(0, P) on a 3-dim coordinate subspace: D(x, s) = P x / (1 + s^2), J = P / (1 + s^2):
    # rank 3 everywhere.
    p = np.diag([1.0, 1, 1, 0, 0, 0, 0, 0])
    d = lambda x, s: (x @ p) / (1 + s[:, None] ** 2)
    out = jacobian.rank_vs_snr(d, states="trajectory", shape=(8,), num_latents=2, subset=[0, 9, 17])
    assert out["rank"].shape == (3, 2) and np.all(out["rank"] == 3)
    np.testing.assert_allclose(out["snr"], 1 / np.array([80.0, out["sigma"][1], 0.002]))
    fwd = jacobian.rank_vs_snr(d, states="forward", data=np.zeros((2, 8)), sigmas=[0.1, 10.0])
    assert np.all(fwd["rank_over_n"] == 3 / 8)
    with pytest.raises(ValueError, match="valid"):
        jacobian.rank_vs_snr(d, states="backward", shape=(8,))
