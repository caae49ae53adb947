"""MoLRG: generator, closed-form population denoiser (VE/VP) against an independent mixture
posterior, analytic Jacobian against jacfwd, and the oracle rank of the published figure (n = 48, K
= 2, d = 6)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem.data import molrg
from diffmem.data.toy import GaussianMixture
from diffmem.metrics import jacobian


def _general(seed=0):
    rng = np.random.default_rng(seed)
    return molrg.MoLRG.make(
        12, 3, 2, seed=seed, lambdas=rng.uniform(0.3, 2.0, (3, 2)), weights=[0.2, 0.3, 0.5]
    )


def test_generator_bases_and_samples():
    m = molrg.MoLRG.make(48, 2, 6, seed=3)
    u = m.bases.transpose(1, 0, 2).reshape(48, 12)
    np.testing.assert_allclose(u.T @ u, np.eye(12), atol=1e-12)
    x, labels = m.sample(5, seed=1, shape=(4, 4, 3))
    assert x.shape == (10, 4, 4, 3) and x.dtype == np.float32 and list(labels) == [0] * 5 + [1] * 5
    assert np.all(m.subspace_error(x) < 1e-6) and np.all(m.nearest_class(x) == labels)
    np.testing.assert_array_equal(x, m.sample(5, seed=1, shape=(4, 4, 3))[0])
    assert np.all(m.subspace_error(np.random.default_rng(0).normal(size=(4, 48))) > 0.5)
    with pytest.raises(ValueError, match="num_classes \\* dim <= n"):
        molrg.MoLRG.make(10, 2, 6)


def test_population_denoiser_equals_gaussian_mixture_posterior(x64):
    m = _general()
    # degenerate U_k Lambda_k U_k^T
    covs = jnp.einsum("knd,kd,kmd->knm", m.bases, m.lambdas, m.bases)
    gm = GaussianMixture(jnp.asarray(m.weights), jnp.zeros((3, 12)), covs)
    x = 1.5 * jax.random.normal(jax.random.key(0), (6, 12), jnp.float64)
    sig = jnp.array([0.05, 0.3, 0.7, 1.0, 3.0, 20.0])
    np.testing.assert_allclose(m.denoiser(x, sig), gm.denoiser(x, sig), rtol=1e-9, atol=1e-11)
    # VP: x_t = alpha x0 + s eps is x0 + (s / alpha) eps scaled by alpha.
    ab = jnp.array([0.9, 0.5, 0.1, 0.02, 0.7, 0.99])
    np.testing.assert_allclose(m.vp_denoiser(x, ab),
                               gm.denoiser(x / jnp.sqrt(ab)[:, None], jnp.sqrt((1 - ab) / ab)),
                               rtol=1e-9, atol=1e-11)


def test_population_denoiser_is_the_monte_carlo_posterior_mean(x64):
    # Self-normalised importance sampling with the prior as proposal: E[x0 | x] = sum_i p(x | x0_i)
    # x0_i / sum_i p(x | x0_i).
    m = molrg.MoLRG.make(6, 2, 1, seed=2)
    x0, _ = m.sample(100_000, seed=4)
    x0 = jnp.asarray(x0, jnp.float64)
    x = jnp.asarray(m.sample(1, seed=9)[0], jnp.float64) + 0.8 * jnp.ones((2, 6)) / jnp.sqrt(6.0)
    logw = -jnp.sum((x[:, None] - x0[None]) ** 2, -1) / (2 * 0.8**2)
    mc = jnp.einsum("bi,in->bn", jax.nn.softmax(logw, -1), x0)
    np.testing.assert_allclose(m.denoiser(x, jnp.full((2,), 0.8)), mc, atol=2e-2)


def test_analytic_jacobian_equals_jacfwd(x64):
    m = _general(1)
    x = jax.random.normal(jax.random.key(1), (12,), jnp.float64)
    for alpha, s in ((0.8, 0.6), (1.0, 5.0)):
        auto = jacobian.denoiser_jacobian(lambda v, sig: m.posterior_mean(v, alpha, s), x, s)
        np.testing.assert_allclose(m.jacobian(x, alpha, s), auto, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dim", [6, 7])
def test_oracle_rank_low_and_high_snr(x64, dim):
    """The published analytic curve: rank d at SNR >= 1.67 and K d at SNR <= 0.3 (0.125 / 0.25 for d
    = 6)."""
    m = molrg.MoLRG.make(48, 2, dim, seed=0)
    out = jacobian.rank_vs_snr(m.denoiser, states="trajectory", shape=(4, 4, 3), num_latents=4)
    high, low = out["snr"] >= 1.67, out["snr"] <= 0.3
    # (a state near the class boundary can add the rank-one weight term: the figure shows medians)
    assert np.all(np.median(out["rank"][high], 1) == dim) and np.all(out["rank"][low] == 2 * dim)
    if dim == 6:
        assert np.all(np.median(out["rank_over_n"][high], 1) == 0.125) and np.all(
            out["rank_over_n"][low] == 0.25
        )


def test_subspace_recovery_and_memorization_ratio(x64):
    m = molrg.MoLRG.make(48, 2, 6, seed=0)
    x, _ = m.sample(1, seed=0)
    # high SNR near class 0: J ~ c P_0
    jac = m.jacobian(x[0].astype(np.float64), 1.0, 0.05)
    assert molrg.subspace_recovery(jac, m.bases[0]) < 1e-6
    assert molrg.subspace_recovery(jac, m.bases[1]) > 1.5
    train, _ = m.sample(4, seed=1)
    near = train[:3] + 1e-3 * np.random.default_rng(0).normal(size=train[:3].shape)
    assert molrg.memorization_ratio(near, train) == 1.0
    assert molrg.memorization_ratio(m.sample(8, seed=5)[0], train) < 0.5


def test_molrg_config_pool_is_the_mixture():
    from diffmem import builders, configlib
    c = configlib.load_config_file("configs/molrg.py:k=4+8,d=7")
    assert c.data.name == "molrg" and c.diffusion.precond == "edm" and c.model.name == "ddpmpp"
    specs = builders.model_specs(c)
    m = builders.molrg_from_config(c)
    assert (
        m.n == 48 and m.dim == 7 and [s.data.shape for s in specs] == [(4, 4, 4, 3), (8, 4, 4, 3)]
    )
    assert np.all(m.subspace_error(specs[1].data) < 1e-6)
    # K / classes per class
    assert sorted(np.bincount(m.nearest_class(specs[1].data))) == [4, 4]
    with pytest.raises(configlib.ConfigError, match="exceeds n"):
        configlib.load_config_file("configs/molrg.py:d=30")
