"""Samplers against exact answers: Gaussian-mixture moments, literal loops of the papers'
algorithms, closed-form ODE solutions (convergence orders), DDIM inversion, per-seed reproducibility
and sharding."""
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from diffmem import sampler_algorithms, sampling
from diffmem import sde as sde_lib
from diffmem.data import toy

# 2-D mixture for the score-based samplers (exact score through GaussianMixture.score_fn).
MIX2 = toy.GaussianMixture.isotropic(jnp.array([[1.0, 0.0], [-0.5, 0.8]]), jnp.array([0.3, 0.2]),
                                     weights=jnp.array([0.6, 0.4]))

# 16-D mixture for the image samplers: components well inside [-1, 1], so x0 clipping is harmless.
D = 16
MEANS16 = np.zeros((2, D))
MEANS16[0, :4], MEANS16[1, 4:8] = 0.3, -0.3
STDS16, WEIGHTS16 = np.array([0.2, 0.25]), np.array([0.6, 0.4])
MIX16 = toy.GaussianMixture.isotropic(jnp.asarray(MEANS16, jnp.float32),
                                      jnp.asarray(STDS16, jnp.float32),
                                      weights=jnp.asarray(WEIGHTS16, jnp.float32))


def mix16_denoiser(x, sigma):
    """Exact denoiser of MIX16 written for isotropic components (a few GEMMs instead of per-example
    Cholesky factorisations; equal to MIX16.denoiser, see test_fast_denoiser_is_the_exact_one)."""
    mu, s2 = jnp.asarray(MEANS16, x.dtype), jnp.asarray(STDS16, x.dtype) ** 2
    var = s2[None, :] + sigma[:, None] ** 2                                    # (B, C)
    sq = jnp.sum(x**2, -1, keepdims=True) - 2 * x @ mu.T + jnp.sum(mu**2, -1)  # ||x - mu_c||^2
    post = jax.nn.softmax(
        jnp.log(jnp.asarray(WEIGHTS16, x.dtype)) - 0.5 * D * jnp.log(var) - 0.5 * sq / var, -1
    )
    shrink = s2[None, :] / var  # component posterior mean: mu_c + shrink (x - mu_c)
    return jnp.sum(post * shrink, -1, keepdims=True) * x + (post * (1 - shrink)) @ mu


def assert_moments(x, mix, z=5.0, extra_var=0.0):
    """Sample mean and covariance within z standard errors of the mixture's (plus extra_var I).

    Standard errors: sqrt(var / n) for a mean; for a covariance entry the standard deviation of the
    centred products (x_i - m_i)(x_j - m_j) over the samples, / sqrt(n) (the standard error of a
    (co)variance).
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    mean = np.asarray(mix.mean(), np.float64)
    cov = np.asarray(mix.covariance(), np.float64) + extra_var * np.eye(x.shape[1])
    assert np.all(np.isfinite(x))
    err_mean = np.abs(x.mean(0) - mean) / np.sqrt(np.diag(cov) / n)
    assert err_mean.max() < z, f"mean off by {err_mean.max():.1f} standard errors"
    c = x - x.mean(0)
    se_cov = (c[:, :, None] * c[:, None, :]).std(0) / np.sqrt(n)
    err_cov = np.abs(np.cov(x.T) - cov) / se_cov
    assert err_cov.max() < z, f"covariance off by {err_cov.max():.1f} standard errors"


def test_fast_denoiser_is_the_exact_one():
    x = MIX16.sample(jax.random.key(0), 64) + 0.5 * jax.random.normal(jax.random.key(1), (64, D))
    sigma = jnp.geomspace(0.002, 80.0, 64)
    np.testing.assert_allclose(mix16_denoiser(x, sigma), MIX16.denoiser(x, sigma), atol=2e-5)


# ----------------------------------------------------------------------------- score-based samplers
N2 = 3000


def test_euler_maruyama_from_prior_matches_moments():
    # Song et al.'s geometric VE SDE (sigma 0.01 -> 20): its N(0, 20^2 I) prior is the noised data
    # law up to the data's 0.7 scale, and the log-uniform grid resolves the small noise levels. (The
    # linear VE with sigma_max = 20 needs ~10^4 EM steps: g^2 dt = 0.4 per step dwarfs the
    # components' variance 0.04.)
    sde = sde_lib.GeometricVESDE(sigma_min=0.01, sigma_max=20.0)
    run = lambda s: sampling.euler_maruyama(
        MIX2.score_fn(sde), sde, sampling.tutorial_init(s, 2, sde, start="prior"), s, 500
    )
    assert_moments(jax.jit(run)(jnp.arange(N2)), MIX2)


def test_euler_maruyama_tutorial_sde_matches_moments():
    # The tutorial's VE SDE (sigma_max = 1), started from the exact noisy marginal p_1 (its prior is
    # not).
    sde = sde_lib.VESDE()
    run = lambda s: sampling.euler_maruyama(
        MIX2.score_fn(sde), sde, MIX2.noisy(1.0).sample(jax.random.key(5), s.shape[0]), s, 500
    )
    assert_moments(jax.jit(run)(jnp.arange(N2)), MIX2)


def test_euler_maruyama_vp_drift_matches_moments():
    sde = sde_lib.VPSDE(t_min=1e-3)
    run = lambda s: sampling.euler_maruyama(
        MIX2.score_fn(sde), sde, sampling.tutorial_init(s, 2, sde, start="prior"), s, 500
    )
    assert_moments(jax.jit(run)(jnp.arange(N2)), MIX2)


def test_probability_flow_ode_from_prior_matches_moments():
    sde = sde_lib.VESDE(sigma_max=20.0)
    # sigma(t1) = 0.02: compare with the law of x0 + 0.02 n, which the exact ODE transports to
    t1 = 1e-6
    run = lambda s: sampling.probability_flow_ode(
        MIX2.score_fn(sde), sde, sampling.tutorial_init(s, 2, sde, start="prior"), t1=t1
    )
    assert_moments(jax.jit(run)(jnp.arange(N2)), MIX2, extra_var=float(sde.sigma(t1)) ** 2)


def test_euler_maruyama_is_the_tutorial_loop(x64):
    """Against a plain transcription of the tutorial's loop (VP, so the drift term counts too)."""
    sde = sde_lib.VPSDE()
    seeds, steps, eps = jnp.arange(5), 12, 1e-3
    score = MIX2.score_fn(sde)
    x = np.asarray(sampling.initial_noise(seeds, (2,), dtype=jnp.float64))
    got = sampling.euler_maruyama(score, sde, jnp.asarray(x), seeds, steps, eps=eps)
    keys = sampling.per_sample_keys(seeds)
    ts = np.linspace(1.0, eps, steps)
    dt = ts[0] - ts[1]
    for i, t in enumerate(ts):
        tb = np.full(5, t)
        g = float(sde.diffusion(t))
        mean = (
            x + (g**2 * np.asarray(score(jnp.asarray(x), tb)) - np.asarray(sde.drift(x, tb))) * dt
        )
        x = mean + np.sqrt(dt) * g * np.asarray(sampling.step_noise(keys, i, (2,), jnp.float64))
    np.testing.assert_allclose(got, mean, rtol=1e-10, atol=1e-12)  # the mean of the last step


def test_tutorial_init():
    sde = sde_lib.VESDE()
    start = sampling.tutorial_init(jnp.arange(500), 2, sde)
    np.testing.assert_allclose(np.linalg.norm(start, axis=1), 1.0, rtol=1e-6)  # radius sigma_max
    prior = sampling.tutorial_init(jnp.arange(4000), 2, sde_lib.VESDE(sigma_max=3.0), start="prior")
    assert abs(float(jnp.std(prior)) - 3.0) < 0.1
    with pytest.raises(ValueError, match="start"):
        sampling.tutorial_init(jnp.arange(3), 2, sde, start="sphere")


# ----------------------------------------------------------------------------------- image samplers
N16 = 2000
IMAGE_SAMPLERS = {
    # Steps chosen so each sampler's discretisation bias (fixed-small DDPM variance, coarse DDIM /
    # EDM grids around the components' 0.2 scale) is well below the 2000-sample standard errors.
    "ddpm": lambda s: sampling.ddpm_ancestral(mix16_denoiser, sampling.initial_noise(s, (D,)), s),
    "ddim_eta0": lambda s: sampling.ddim(
        mix16_denoiser, sampling.initial_noise(s, (D,)), num_steps=250
    ),
    "ddim_eta1": lambda s: sampling.ddim(
        mix16_denoiser, sampling.initial_noise(s, (D,)), s, num_steps=500, eta=1.0
    ),
    "edm_heun": lambda s: sampling.edm_heun(
        mix16_denoiser, sampling.initial_noise(s, (D,), 80.0), num_steps=40
    ),
    "edm_euler": lambda s: sampling.edm_euler(
        mix16_denoiser, sampling.initial_noise(s, (D,), 80.0), num_steps=200
    ),
    "edm_heun_churn": lambda s: sampling.edm_heun(
        mix16_denoiser,
        sampling.initial_noise(s, (D,), 80.0),
        s,
        num_steps=40,
        S_churn=40.0,
        S_min=0.05,
        S_max=50.0,
        S_noise=1.003,
    ),
}


@pytest.mark.parametrize("name", sorted(IMAGE_SAMPLERS))
def test_image_sampler_matches_mixture_moments(name):
    assert_moments(jax.jit(IMAGE_SAMPLERS[name])(jnp.arange(N16)), MIX16)


def test_ddpm_is_ho_algorithm_2(x64):
    """Against Ho et al.'s Algorithm 2 in its epsilon form (no clipping), sigma_t^2 =
    beta_tilde_t."""
    T, seeds = 50, jnp.arange(6)
    x = np.asarray(sampling.initial_noise(seeds, (D,), dtype=jnp.float64))
    got = sampling.ddpm_ancestral(mix16_denoiser, jnp.asarray(x), seeds, num_steps=T, clip_x0=False)
    betas = np.linspace(1e-4, 0.02, T)
    ab = np.cumprod(1 - betas)
    keys = sampling.per_sample_keys(seeds)
    for i, t in enumerate(range(T - 1, -1, -1)):
        x0 = np.asarray(
            mix16_denoiser(
                jnp.asarray(x / np.sqrt(ab[t])), jnp.full(6, np.sqrt((1 - ab[t]) / ab[t]))
            )
        )
        eps = (x - np.sqrt(ab[t]) * x0) / np.sqrt(1 - ab[t])
        x = (x - betas[t] / np.sqrt(1 - ab[t]) * eps) / np.sqrt(1 - betas[t])
        if t > 0:
            var = (1 - ab[t - 1]) / (1 - ab[t]) * betas[t]
            x = x + np.sqrt(var) * np.asarray(sampling.step_noise(keys, i, (D,), jnp.float64))
    np.testing.assert_allclose(got, x, rtol=1e-9, atol=1e-10)


def test_ddim_eta1_on_the_full_grid_is_ddpm(x64):
    T, seeds = 40, jnp.arange(6)
    xT = sampling.initial_noise(seeds, (D,), dtype=jnp.float64)
    ddpm = sampling.ddpm_ancestral(mix16_denoiser, xT, seeds, num_steps=T, clip_x0=False)
    ddim = sampling.ddim(mix16_denoiser, xT, seeds, num_steps=T, T=T, eta=1.0)
    np.testing.assert_allclose(ddim, ddpm, rtol=1e-9, atol=1e-10)


def test_ddim_eta0_is_deterministic_and_invertible(x64):
    """x0 -> ddim_invert -> ddim(final_denoise=False) returns to x0; DDIM is a first-order scheme,
    so the round-trip error halves as the steps double."""
    x0 = MIX16.sample(jax.random.key(0), 64).astype(jnp.float64)
    errs = {}
    for n in (125, 250, 500):
        xT = sampling.ddim_invert(mix16_denoiser, x0, n)
        assert float(jnp.std(xT)) > 0.5  # it really went to noise
        back = sampling.ddim(mix16_denoiser, xT, num_steps=n, final_denoise=False)
        np.testing.assert_array_equal(
            back, sampling.ddim(mix16_denoiser, xT, num_steps=n, final_denoise=False)
        )
        errs[n] = float(jnp.max(jnp.abs(back - x0)))
    assert errs[125] / errs[250] > 1.7 and errs[250] / errs[500] > 1.7, errs
    assert errs[500] < 0.02, errs


def test_edm_orders_of_convergence(x64):
    """Data N(mu, c^2 I): the PF-ODE solution from x_T at sigma_T is x(sigma) = mu + (x_T - mu)
    sqrt(c^2 + sigma^2) / sqrt(c^2 + sigma_T^2). Heun's error falls ~4x per doubling of steps,
    Euler's ~2x."""
    mu, c, s_max = 0.3, 0.5, 80.0
    gauss = toy.GaussianMixture.isotropic(jnp.full((1, 4), mu, jnp.float64), c)
    xT = s_max * jax.random.normal(jax.random.key(1), (8, 4), jnp.float64)
    exact = mu + (xT - mu) * c / math.sqrt(c**2 + s_max**2)
    err = lambda f, n: float(jnp.max(jnp.abs(f(gauss.denoiser, xT, num_steps=n) - exact)))
    heun = [err(sampling.edm_heun, n) for n in (16, 32, 64)]
    euler = [err(sampling.edm_euler, n) for n in (64, 128, 256)]
    assert 3.0 < heun[0] / heun[1] < 5.0 and 3.0 < heun[1] / heun[2] < 5.0, heun
    assert 1.6 < euler[0] / euler[1] < 2.6 and 1.6 < euler[1] / euler[2] < 2.6, euler


def test_edm_heun_uses_2n_minus_1_evaluations():
    calls = []

    def counting(x, sigma):
        jax.debug.callback(lambda: calls.append(1))
        return mix16_denoiser(x, sigma)

    jax.block_until_ready(jax.jit(lambda x: sampling.edm_heun(counting, x))(jnp.ones((2, D))))
    jax.effects_barrier()
    assert len(calls) == 35


# ---------------------------------------------------------------------------------- reproducibility
_VE = sde_lib.VESDE()
SEEDED = {
    "euler_maruyama": lambda s: sampling.euler_maruyama(
        MIX2.score_fn(_VE), _VE, sampling.tutorial_init(s, 2, _VE), s, 40
    ),
    "probability_flow_ode": lambda s: sampling.probability_flow_ode(
        MIX2.score_fn(_VE), _VE, sampling.tutorial_init(s, 2, _VE), t1=1e-3
    ),
    "ddpm": lambda s: sampling.ddpm_ancestral(
        mix16_denoiser, sampling.initial_noise(s, (D,)), s, num_steps=40
    ),
    "ddim_eta1": lambda s: sampling.ddim(
        mix16_denoiser, sampling.initial_noise(s, (D,)), s, num_steps=20, eta=1.0
    ),
    "edm_heun_churn": lambda s: sampling.edm_heun(
        mix16_denoiser, sampling.initial_noise(s, (D,), 80.0), s, num_steps=10, S_churn=10.0
    ),
}


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_seed_splits_give_identical_samples(name):
    run = jax.jit(SEEDED[name])
    full = np.asarray(run(jnp.arange(16)))
    assert np.all(np.isfinite(full))
    np.testing.assert_array_equal(np.asarray(run(jnp.arange(8))), full[:8])
    np.testing.assert_array_equal(np.asarray(run(jnp.arange(8, 16))), full[8:])


def test_euler_maruyama_noise_is_the_same_drawn_up_front_or_per_step(monkeypatch):
    run = lambda s: sampling.euler_maruyama(
        MIX2.score_fn(_VE), _VE, sampling.tutorial_init(s, 2, _VE), s, 20
    )
    upfront = np.asarray(run(jnp.arange(6)))
    monkeypatch.setattr(sampler_algorithms, "_UPFRONT_NOISE_MAX", 0)
    # Same noise; the two programs fuse differently, so allow float32 rounding (1 ulp seen).
    np.testing.assert_allclose(np.asarray(run(jnp.arange(6))), upfront, rtol=1e-6, atol=1e-7)


def test_sample_sharded_over_8_devices_equals_1_device():
    assert len(jax.devices()) == 8, "conftest should give 8 CPU devices"
    seeds = np.arange(100, 113)  # 13 seeds: padded to 16 on 8 devices
    sampler = SEEDED["euler_maruyama"]
    one = sampling.sample_sharded(sampler, seeds, Mesh(np.array(jax.devices()[:1]), ("data",)))
    eight = sampling.sample_sharded(sampler, seeds, Mesh(np.array(jax.devices()), ("data",)))
    assert eight.shape == (13, 2)
    assert len(eight.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(eight), np.asarray(one))
    np.testing.assert_array_equal(np.asarray(one), np.asarray(jax.jit(sampler)(jnp.asarray(seeds))))


def _compiles_of(name, fn):
    """How many XLA compiles of a function called `name` running fn() takes."""
    names = []

    def listen(event, secs, **kw):
        if event.endswith("backend_compile_duration"):
            names.append(kw.get("fun_name"))
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return sum(n is not None and name in n for n in names)


def test_sample_sharded_compiles_once_for_8_devices():
    """The one-device program is compiled once and its binary loaded on the other 7 devices (not 8
    compiles); a program with a host callback cannot move and is compiled per device; both give the
    1-device bits."""
    eight, one = (Mesh(np.array(jax.devices()), ("data",)),
                  Mesh(np.array(jax.devices()[:1]), ("data",)))

    def shifted_noise(seeds):
        return sampling.initial_noise(seeds, (3,)) * 2.0 + 1.0

    def with_callback(seeds):
        x = sampling.initial_noise(seeds, (3,))
        return jax.pure_callback(
            lambda a: np.asarray(a) * 2.0 + 1.0, jax.ShapeDtypeStruct(x.shape, x.dtype), x
        )

    for fn, compiles in ((shifted_noise, 1), (with_callback, 8)):
        got = []
        run = lambda: got.append(sampling.sample_sharded(fn, np.arange(30), eight, block=4))
        assert _compiles_of(fn.__name__, run) == compiles
        assert len(got[0].sharding.device_set) == 8
        alone = sampling.sample_sharded(fn, np.arange(30), one, block=4)
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(alone))
        # another batch shape: rounding may differ
        noise = np.asarray(sampling.initial_noise(np.arange(30), (3,)))
        np.testing.assert_allclose(np.asarray(got[0]), 2.0 * noise + 1.0, rtol=1e-6, atol=1e-6)


def test_sample_sharded_with_a_warm_compilation_cache(tmp_path):
    """A one-device program that JAX loads from its persistent compilation cache serializes again
    without its machine code; sample_sharded must not move that binary to the other devices (they
    failed with "Function ... not found" and the result's all-gather hung). Two processes share a
    fresh cache: the second finds the program there and must give the first one's samples."""
    code = (
        "import sys; import numpy as np, jax; from jax.sharding import Mesh; from diffmem import "
        "sampling\n"
        "def noise(seeds):\n    return sampling.initial_noise(seeds, (3,)) * 2.0 + 1.0\n"
        "mesh = Mesh(np.array(jax.devices()), ('data',))\n"
        "np.save(sys.argv[1], np.asarray(sampling.sample_sharded(noise, np.arange(30), mesh, "
        "block=4)))\n"
    )
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    for name in ("cold", "warm"):
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / name)], env=env, check=True, timeout=300
        )
    assert os.listdir(tmp_path / "cache")
    np.testing.assert_array_equal(np.load(tmp_path / "warm.npy"), np.load(tmp_path / "cold.npy"))


def test_inputs_are_validated():
    x = jnp.zeros((4, D))
    with pytest.raises(ValueError, match="seed"):
        # 3 seeds for 4 samples
        sampling.ddpm_ancestral(mix16_denoiser, x, jnp.arange(3), num_steps=5)
    with pytest.raises(ValueError, match="one key per sample"):
        sampling.initial_noise(jax.random.key(0), (2,))  # a batch-level key
    with pytest.raises(ValueError, match="integer seeds"):
        sampling.initial_noise(jnp.zeros(4), (2,))
    with pytest.raises(ValueError, match="eta > 0"):
        sampling.ddim(mix16_denoiser, x, eta=0.5)
    with pytest.raises(ValueError, match="S_churn"):
        sampling.edm_heun(mix16_denoiser, x, S_churn=1.0)
    with pytest.raises(ValueError, match="eps"):
        sampling.euler_maruyama(MIX2.score_fn(_VE), _VE, jnp.zeros((2, 2)), jnp.arange(2), eps=0.0)
    with pytest.raises(ValueError, match="2\\*\\*32"):
        sampling.sample_sharded(
            SEEDED["ddpm"], [-1, 2], Mesh(np.array(jax.devices()[:1]), ("data",))
        )


def test_one_step_per_sampler_family_shared_with_critical_times_and_jacobians():
    from diffmem.metrics import critical_time, jacobian

    assert (
        critical_time.ddim_step is sampling.ddim_step and critical_time.em_step is sampling.em_step
    )
    assert jacobian.edm_step is sampling.edm_step
    # ddim_step with per-example levels is the scalar step row by row.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, D)), jnp.float32)
    a, an = jnp.asarray([0.5, 0.7, 0.9], jnp.float32), jnp.asarray([0.6, 0.8, 1.0], jnp.float32)
    rows, _ = sampling.ddim_step(mix16_denoiser, x, a, an)
    for i in range(3):
        one, _ = sampling.ddim_step(mix16_denoiser, x[i:i + 1], a[i], an[i])
        np.testing.assert_allclose(rows[i], one[0], rtol=1e-6, atol=1e-6)
