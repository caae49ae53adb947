"""Image losses at the exact denoiser of a Gaussian equal their closed-form minimum (MMSE)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import losses, precond
from diffmem.data import toy
from diffmem.sde import ddpm_alpha_bar


def test_weighted_denoising_at_exact_denoiser_is_the_mmse(x64):
    c, d, n = 0.6, 4, 200_000
    g = toy.GaussianMixture.isotropic(jnp.zeros((1, d)), c)
    x0 = g.sample(jax.random.key(0), n)
    for sigma in (0.05, 0.5, 3.0):
        noise = jax.random.normal(jax.random.key(1), x0.shape)
        per = losses.weighted_denoising(
            g.denoiser, x0, jnp.full((n,), sigma), noise, jnp.ones((n,))
        )
        mmse = c**2 * sigma**2 / (c**2 + sigma**2)
        assert abs(float(per.mean()) - mmse) < 4 * float(per.std()) / np.sqrt(n)


def test_ddpm_eps_loss_at_exact_predictor(x64):
    c, d, n = 0.5, 3, 200_000
    ab = jnp.asarray(ddpm_alpha_bar())
    x0 = c * jax.random.normal(jax.random.key(2), (n, d))

    def eps_exact(xt, t):  # E[eps | x_t] for x0 ~ N(0, c^2 I)
        a = ab[t][:, None]
        return jnp.sqrt(1 - a) * xt / (a * c**2 + 1 - a)

    t = jnp.full((n,), 300)
    noise = jax.random.normal(jax.random.key(3), x0.shape)
    per = losses.ddpm_eps(eps_exact, x0, t, noise, ab)
    a = float(ab[300])
    expected = 1 - (1 - a) / (a * c**2 + 1 - a)
    assert abs(float(per.mean()) - expected) < 4 * float(per.std()) / np.sqrt(n)
    # Random draws: t covers the whole range, per-example values do not depend on the batch size.
    full = losses.ddpm_eps_from_key(eps_exact, x0[:16], jax.random.key(4), ab)
    part = losses.ddpm_eps_from_key(eps_exact, x0[:8], jax.random.key(4), ab)
    np.testing.assert_allclose(full[:8], part)


@pytest.mark.parametrize("name", ["edm", "vp", "ve", "ddpm"])
def test_noise_level_draws_and_weights_come_from_the_preconditioning(name):
    p = precond.make(name)
    x0 = jnp.zeros((4000, 3))
    sigma, weight, noise = losses.sample_denoising_inputs(jax.random.key(0), x0, p)
    assert sigma.shape == weight.shape == (4000,) and noise.shape == x0.shape
    assert bool(jnp.all(sigma > 0)) and bool(jnp.all(jnp.isfinite(weight)))
    np.testing.assert_allclose(weight, p.loss_weight(sigma), rtol=1e-6)
    # Example i's draws depend on fold_in(key, i) only: a smaller batch gives the same leading
    # draws.
    part = losses.sample_denoising_inputs(jax.random.key(0), x0[:10], p)
    np.testing.assert_array_equal(part[0], sigma[:10])
    np.testing.assert_array_equal(part[2], noise[:10])
    if name == "edm":
        ls = jnp.log(sigma)
        assert abs(float(ls.mean()) + 1.2) < 0.06 and abs(float(ls.std()) - 1.2) < 0.06


@pytest.mark.parametrize("name", ["edm", "vp", "ve", "ddpm"])
def test_weighted_loss_at_the_exact_denoiser_is_its_analytic_minimum(name, x64):
    """For x0 ~ N(0, c^2 I) the exact denoiser's expected loss at sigma is lambda(sigma) c^2 sigma^2
    / (c^2 + sigma^2) (the MMSE per dimension): the drawn loss matches it example by example on
    average."""
    c, n = 0.5, 20_000
    p = precond.make(name)
    g = toy.GaussianMixture.isotropic(jnp.zeros((1, 2)), c)
    x0 = g.sample(jax.random.key(1), n)
    per = losses.weighted_denoising_from_key(g.denoiser, x0, jax.random.key(2), p)
    sigma, weight, _ = losses.sample_denoising_inputs(jax.random.key(2), x0, p)
    expected = weight * c**2 * sigma**2 / (c**2 + sigma**2)
    diff = per - expected
    assert per.shape == (n,)
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / np.sqrt(n)


def test_sum_reduction_is_pixel_count_times_mean_exactly():
    """EDM (and Gu et al.) sum each example's squared error over its pixels; diffmem's mean is 1/n
    of it (n = 64 pixels here: a power of two, so the two agree to the last bit)."""
    x0 = jax.random.normal(jax.random.key(0), (3, 4, 4, 4))
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    d = lambda x, s: 0.5 * x  # noqa: E731
    sigma, w = jnp.asarray([0.1, 1.0, 7.0]), jnp.asarray([1.0, 2.0, 0.5])
    mean = losses.weighted_denoising(d, x0, sigma, noise, w)
    total = losses.weighted_denoising(d, x0, sigma, noise, w, reduction="sum")
    np.testing.assert_array_equal(np.asarray(total), 64 * np.asarray(mean))
    ab = jnp.asarray(ddpm_alpha_bar(), jnp.float32)
    eps = lambda x, t: 0.3 * x  # noqa: E731
    m = losses.ddpm_eps_from_key(eps, x0, jax.random.key(2), ab)
    s = losses.ddpm_eps_from_key(eps, x0, jax.random.key(2), ab, reduction="sum")
    np.testing.assert_array_equal(np.asarray(s), 64 * np.asarray(m))
    with pytest.raises(ValueError, match=r"valid: \['mean', 'sum'\]"):
        losses.weighted_denoising(d, x0, sigma, noise, w, reduction="avg")


def test_config_loss_reduction_reaches_the_training_loss():
    """The Gu recipe's loss.reduction = "sum" gives 64x the "mean" loss on the same draws (8x8x1
    digits)."""
    import os
    from diffmem import builders, configlib
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = configlib.load_config_file(
        os.path.join(repo, "configs/digits.py") + ":arch=ddpmpp,precond=edm"
    )
    assert c.loss.reduction == "mean"

    class Net:  # a stand-in for the DDPM++ (builders only calls apply)
        def apply(self, params, x, c_noise, labels=None, train=False, rngs=None):
            return params * x

    x0 = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1), minval=-1, maxval=1)
    mean = builders.build_loss(c, Net())(0.5, x0, jax.random.key(2))
    c.loss.reduction = "sum"
    total = builders.build_loss(c, Net())(0.5, x0, jax.random.key(2))
    np.testing.assert_allclose(np.asarray(total), 64 * np.asarray(mean), rtol=1e-6)
    c.loss.reduction = "avg"
    with pytest.raises(
        configlib.ConfigError, match=r"loss.reduction 'avg'; valid: \['mean', 'sum'\]"
    ):
        builders.build_loss(c, Net())
