"""Preconditionings (EDM, VP, VE, DDPM, DDPM-step labels): Karras et al.'s Table 1 identities, the
DDPM grid, training noise levels, and the epsilon loss as a special case of the weighted denoising
loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import losses, precond
from diffmem.sde import ddpm_alpha_bar

NAMES = ["edm", "vp", "ve", "ddpm"]
SIGMAS = jnp.array([0.003, 0.02, 0.3, 1.0, 5.0, 70.0])


def test_make_names_valid_choices_and_fields():
    assert isinstance(precond.make("vp", beta_d=10.0), precond.VP)
    with pytest.raises(ValueError, match=r"valid names: \['ddpm', 'edm', 've', 'vp'\]"):
        precond.make("iddpm")
    with pytest.raises(
        ValueError, match=r"no field\(s\) \['sigma'\]; valid fields: .*'sigma_data'"
    ):
        precond.make("edm", sigma=1.0)
    with pytest.raises(ValueError, match="'nearest' or 'continuous'"):
        precond.make("ddpm", timestep="round")


@pytest.mark.parametrize("name", NAMES)
def test_effective_loss_weight_is_one(name):
    """lambda(sigma) c_out(sigma)^2 = 1 for every preconditioning (EDM eq. 8): the raw network's
    regression target has unit weight at every noise level."""
    p = precond.make(name)
    c = p.coefficients(SIGMAS)
    np.testing.assert_allclose(p.loss_weight(SIGMAS) * c.c_out**2, 1.0, rtol=1e-5)


def test_edm_inputs_and_targets_have_unit_variance():
    p, sd = precond.EDM(), 0.5
    c = p.coefficients(SIGMAS)
    np.testing.assert_allclose(c.c_in**2 * (sd**2 + SIGMAS**2), 1.0, rtol=1e-6)
    # Target F = (x0 - c_skip (x0 + sigma n)) / c_out for x0 with std sd: variance 1.
    var = ((1 - c.c_skip) ** 2 * sd**2 + c.c_skip**2 * SIGMAS**2) / c.c_out**2
    np.testing.assert_allclose(var, 1.0, rtol=1e-5)
    np.testing.assert_allclose(c.c_noise, jnp.log(SIGMAS) / 4, rtol=1e-6)


def test_denoise_wraps_the_raw_network_exactly():
    """With the exact raw network of x0 ~ N(0, c^2 I), every preconditioning returns the posterior
    mean."""
    c2 = 0.7**2
    x = jax.random.normal(jax.random.key(0), (SIGMAS.shape[0], 3)) * 2.0
    for name in NAMES:
        p = precond.make(name, **({"timestep": "continuous"} if name == "ddpm" else {}))
        co = p.coefficients(SIGMAS)

        def raw(x_in, c_noise, co=co):
            xx = x_in / co.c_in[:, None]
            return (c2 / (c2 + SIGMAS[:, None] ** 2) * xx - co.c_skip[:, None] * xx) / co.c_out[
                :, None
            ]

        np.testing.assert_allclose(
            p.denoise(raw, x, SIGMAS), c2 / (c2 + SIGMAS[:, None] ** 2) * x, rtol=2e-5, atol=1e-6
        )


def test_vp_sigma_and_its_inverse():
    p = precond.VP()
    t = jnp.linspace(1e-5, 1.0, 7)
    np.testing.assert_allclose(p.t_of_sigma(p.sigma(t)), t, rtol=1e-4, atol=1e-7)
    assert p.sigma_max == pytest.approx(float(np.sqrt(np.expm1(0.5 * 19.9 + 0.1))))
    np.testing.assert_allclose(p.coefficients(p.sigma(t)).c_noise, 999 * t, rtol=1e-4, atol=1e-3)
    s = p.sample_sigma(jax.random.key(0), (5000,))
    assert float(s.min()) >= p.sigma_min * 0.999 and float(s.max()) <= p.sigma_max * 1.001


def test_ve_draws_are_log_uniform_on_its_range():
    p = precond.VE()
    u = (jnp.log(p.sample_sigma(jax.random.key(1), (20_000,))) - np.log(0.02)) / np.log(100 / 0.02)
    assert 0 <= float(u.min()) and float(u.max()) <= 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005


def test_ddpm_grid_steps_and_inputs():
    p = precond.DDPM()
    ab = ddpm_alpha_bar()
    grid = jnp.asarray(p.sigmas(), jnp.float32)
    assert p.sigma_min == pytest.approx(np.sqrt((1 - ab[0]) / ab[0]))
    steps = jnp.arange(0, 999, 37)
    np.testing.assert_array_equal(p.t_of_sigma(grid[steps]), steps)
    cont = precond.DDPM(timestep="continuous").t_of_sigma(jnp.sqrt(grid[steps] * grid[steps + 1]))
    assert bool(jnp.all((cont > steps) & (cont < steps + 1)))
    # On the grid, c_in (x0 + sigma_t eps) is Ho et al.'s x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps.
    x0, eps = jnp.array([0.3, -0.8]), jnp.array([1.1, 0.4])
    t = 400
    c = p.coefficients(grid[t:t + 1])
    np.testing.assert_allclose(
        c.c_in * (x0 + grid[t] * eps), np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * eps, rtol=1e-5
    )
    assert set(
        np.unique(np.asarray(p.t_of_sigma(p.sample_sigma(jax.random.key(0), (3000,)))))
    ) <= set(range(1000))


def test_epsilon_loss_is_the_weighted_loss_of_the_ddpm_preconditioning():
    """On the grid, lambda |D - x0|^2 with D = x - sigma eps_hat(c_in x, t) equals |eps_hat -
    eps|^2."""
    p = precond.DDPM()
    ab = jnp.asarray(ddpm_alpha_bar(), jnp.float32)
    w = jax.random.normal(jax.random.key(0), (4, 4)) * 0.3

    def eps_model(xt, t):  # any smooth function of (x_t, t)
        return jnp.tanh(xt @ w) + 1e-3 * t[:, None].astype(xt.dtype)

    x0 = jax.random.normal(jax.random.key(1), (64, 4))
    noise = jax.random.normal(jax.random.key(2), (64, 4))
    t = jax.random.randint(jax.random.key(3), (64,), 0, 1000)
    sigma = jnp.asarray(p.sigmas(), jnp.float32)[t]
    ho = losses.ddpm_eps(eps_model, x0, t, noise, ab)
    edm = losses.weighted_denoising(p.denoiser(eps_model), x0, sigma, noise, p.loss_weight(sigma))
    np.testing.assert_allclose(edm, ho, rtol=2e-3, atol=1e-5)
    # The library's DDPM denoiser on an explicit alpha_bar is the same function.
    x = x0 + sigma[:, None] * noise
    np.testing.assert_allclose(precond.ddpm_denoiser(eps_model)(x, sigma),
                               p.denoiser(eps_model)(x, sigma), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("base", [precond.EDM(), precond.VE()])
def test_step_labels_feed_the_ddpm_step_and_keep_everything_else(base):
    p = precond.StepLabels(base)
    grid = jnp.asarray(precond.DDPM().sigmas(), jnp.float32)
    step = p.coefficients(grid).c_noise
    # Near the grid index: the continuous VP schedule and the discrete betas differ at second order
    # in beta.
    assert float(jnp.max(jnp.abs(step - jnp.arange(1000)))) <= 3.5
    wide = p.coefficients(jnp.geomspace(1e-3, 200.0, 50)).c_noise
    assert bool(jnp.all(jnp.diff(wide) > 0)) and float(wide[0]) >= 0.0
    np.testing.assert_allclose(step, precond.VP().coefficients(grid).c_noise, rtol=1e-5, atol=1e-3)
    a, b = p.coefficients(SIGMAS), base.coefficients(SIGMAS)
    for field in ("c_skip", "c_out", "c_in"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    key = jax.random.key(4)
    np.testing.assert_array_equal(p.sample_sigma(key, (8,)), base.sample_sigma(key, (8,)))
    np.testing.assert_array_equal(p.loss_weight(SIGMAS), base.loss_weight(SIGMAS))
    assert (p.sigma_min, p.sigma_max) == (base.sigma_min, base.sigma_max)
