"""Samplers. Every sampler takes a batched score s(x, t) or denoiser D(x, sigma) and per-sample integer
seeds: sample i's noise comes from `key(seed_i)` alone, so any split of a seed range across batches,
devices or jobs gives identical samples. Score functions are called with t of shape (1,) (one time for the
whole batch); `diffmem.sde` functions and the networks broadcast it.
"""
from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from diffmem.sde import SDE, Denoiser, ScoreFn, _bcast


def _keys(seeds: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))


def initial_noise(seeds: jax.Array, shape: tuple[int, ...], std: float = 1.0) -> jax.Array:
    """(B, *shape) Gaussian starts, row i from seed i alone."""
    return std * jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(_keys(seeds))


def step_noise(keys: jax.Array, step, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """(B, *shape) standard normals for sampler step `step`: row i from fold_in(fold_in(key_i, 1), step)."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(jax.random.fold_in(k, 1), step), shape, dtype))(keys)


def tutorial_init(seeds: jax.Array, dim: int, sde: SDE) -> jax.Array:
    """The tutorial's start: Gaussian draws normalised to the sphere of radius marginal_std(1)."""
    z = initial_noise(seeds, (dim,))
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True) * sde.marginal_std(jnp.asarray(sde.t_max))


def euler_maruyama(score_fn: ScoreFn, sde: SDE, x_init: jax.Array, seeds: jax.Array, num_steps: int = 1000,
                   eps: float | None = None) -> jax.Array:
    """Euler-Maruyama for the reverse SDE dx = [f - g^2 s] dt + g dw (the tutorial's sampler).

    Time grid linspace(t_max, eps, num_steps); returns the mean of the last step (no final noise).
    """
    eps = sde.t_min if eps is None else eps
    ts = jnp.linspace(sde.t_max, eps, num_steps, dtype=x_init.dtype)
    dt = ts[0] - ts[1]
    keys = _keys(seeds)
    # Small problems draw every step's noise up front (one random op instead of one per step); the noise of
    # sample i, step j is the same either way: normal(fold_in(key_i, 1))[j] in both cases.
    upfront = x_init.size * num_steps <= (1 << 24)
    if upfront:
        noise = jax.vmap(lambda j: step_noise(keys, j, x_init.shape[1:], x_init.dtype))(jnp.arange(num_steps))

    def step(x, i):
        t = jnp.full((1,), ts[i], x.dtype)  # one time for the whole batch, broadcast by score_fn
        g = _bcast(sde.diffusion(t), x)
        mean = x + (g**2 * score_fn(x, t) - sde.drift(x, t)) * dt
        z = noise[i] if upfront else step_noise(keys, i, x.shape[1:], x.dtype)
        return mean + jnp.sqrt(dt) * g * z, mean

    _, means = jax.lax.scan(step, x_init, jnp.arange(num_steps))
    return means[-1]


def probability_flow_ode(score_fn: ScoreFn, sde: SDE, x_init: jax.Array, t0: float | None = None,
                         t1: float | None = None, solver=None, rtol: float = 1e-5, atol: float = 1e-5) -> jax.Array:
    """Integrate dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) from t0 (default t_max) to t1 (default t_min) with diffrax."""
    t0 = sde.t_max if t0 is None else t0
    t1 = sde.t_min if t1 is None else t1

    def drift(t, x, args):
        tb = jnp.full((1,), t, x.dtype)
        return sde.drift(x, tb) - 0.5 * _bcast(sde.diffusion(tb), x) ** 2 * score_fn(x, tb)

    sol = diffrax.diffeqsolve(diffrax.ODETerm(drift), solver or diffrax.Tsit5(), t0, t1, None, x_init,
                              stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                              max_steps=100_000)
    return sol.ys[-1]


# ----------------------------------------------------------------------------------- image samplers
# All take a batched denoiser D(x, sigma) in EDM's unscaled (variance-exploding) view.

def _vp_denoise(denoiser: Denoiser, x: jax.Array, ab: jax.Array) -> jax.Array:
    """x0 prediction at a VP state x_t = sqrt(ab) x0 + sqrt(1 - ab) eps via D(x_t / sqrt(ab), sigma)."""
    sigma = jnp.sqrt((1 - ab) / ab)
    return denoiser(x / jnp.sqrt(ab), jnp.full(x.shape[:1], sigma, x.dtype))


def ddpm_ancestral(denoiser: Denoiser, x_T: jax.Array, seeds: jax.Array, *, num_steps: int = 1000,
                   beta_start: float = 1e-4, beta_end: float = 0.02, clip_x0: bool = True) -> jax.Array:
    """Ho et al. (2020) Algorithm 2 with the fixed-small variance beta_tilde, written through the x0
    prediction (clipped to [-1, 1] as in Pham et al.'s code) and the posterior q(x_{t-1} | x_t, x0)."""
    betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    c0 = np.sqrt(ab_prev) * betas / (1 - ab)            # posterior mean coefficient of x0
    ct = np.sqrt(1 - betas) * (1 - ab_prev) / (1 - ab)  # ... and of x_t
    var = betas * (1 - ab_prev) / (1 - ab)
    keys = _keys(seeds)
    tables = [jnp.asarray(a, x_T.dtype) for a in (ab, c0, ct, var)]

    def step(x, i):
        t = num_steps - 1 - i
        a, k0, kt, v = (tab[t] for tab in tables)
        x0 = _vp_denoise(denoiser, x, a)
        x0 = jnp.clip(x0, -1, 1) if clip_x0 else x0
        mean = k0 * x0 + kt * x
        z = step_noise(keys, i, x.shape[1:], x.dtype)
        return jnp.where(t > 0, mean + jnp.sqrt(v) * z, mean), None

    x, _ = jax.lax.scan(step, x_T, jnp.arange(num_steps))
    return x


def _ddim_times(num_steps: int, T: int) -> np.ndarray:
    return np.arange(0, T, T // num_steps)[:num_steps]


def ddim(denoiser: Denoiser, x_T: jax.Array, seeds: jax.Array | None = None, *, num_steps: int = 50,
         eta: float = 0.0, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
         clip_x0: bool = False, final_denoise: bool = True) -> jax.Array:
    """Song et al. (2021) DDIM, eq. 12, over uniformly skipped steps of the T-step DDPM schedule; eta = 0 is
    deterministic (seeds unused), eta = 1 matches DDPM's variance. With final_denoise=False the last step
    (the x0 prediction from the smallest noise level) is skipped and the state at that level returned,
    which is what `ddim_invert` starts from."""
    ab = np.cumprod(1 - np.linspace(beta_start, beta_end, T, dtype=np.float64))
    ts = _ddim_times(num_steps, T)[::-1]
    a_now = jnp.asarray(ab[ts], x_T.dtype)
    a_prev = jnp.asarray(np.concatenate([ab[ts[1:]], [1.0]]), x_T.dtype)
    keys = None if seeds is None else _keys(seeds)

    def step(x, i):
        a, ap = a_now[i], a_prev[i]
        x0 = _vp_denoise(denoiser, x, a)
        x0 = jnp.clip(x0, -1, 1) if clip_x0 else x0
        eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
        s = eta * jnp.sqrt((1 - ap) / (1 - a)) * jnp.sqrt(1 - a / ap)
        x = jnp.sqrt(ap) * x0 + jnp.sqrt(jnp.maximum(1 - ap - s**2, 0.0)) * eps
        if eta > 0:
            x = x + s * step_noise(keys, i, x.shape[1:], x.dtype)
        return x, None

    x, _ = jax.lax.scan(step, x_T, jnp.arange(num_steps if final_denoise else num_steps - 1))
    return x


def ddim_invert(denoiser: Denoiser, x0: jax.Array, *, num_steps: int = 50, T: int = 1000,
                beta_start: float = 1e-4, beta_end: float = 0.02) -> jax.Array:
    """DDIM (eta = 0) run forwards, from the smallest noise level of `ddim`'s grid to the largest: the inverse
    of `ddim(..., final_denoise=False)` up to discretisation error. Pass data to treat it as that level
    (alpha_bar ~ 1), as DDIM inversion usually does."""
    ab = np.cumprod(1 - np.linspace(beta_start, beta_end, T, dtype=np.float64))
    levels = jnp.asarray(ab[_ddim_times(num_steps, T)], x0.dtype)

    def step(x, i):
        a, an = levels[i], levels[i + 1]
        x0_hat = _vp_denoise(denoiser, x, a)
        eps = (x - jnp.sqrt(a) * x0_hat) / jnp.sqrt(1 - a)
        return jnp.sqrt(an) * x0_hat + jnp.sqrt(1 - an) * eps, None

    x, _ = jax.lax.scan(step, x0, jnp.arange(num_steps - 1))
    return x


def edm_euler(denoiser: Denoiser, x_T: jax.Array, *, num_steps: int = 18, sigma_min: float = 0.002,
              sigma_max: float = 80.0, rho: float = 7.0) -> jax.Array:
    """Karras et al. (2022) Algorithm 1 without the second-order correction (Euler). x_T ~ N(0, sigma_max^2 I)."""
    return _edm(denoiser, x_T, num_steps, sigma_min, sigma_max, rho, heun=False)


def edm_heun(denoiser: Denoiser, x_T: jax.Array, *, num_steps: int = 18, sigma_min: float = 0.002,
             sigma_max: float = 80.0, rho: float = 7.0) -> jax.Array:
    """Karras et al. (2022) Algorithm 1: Heun's 2nd-order method on the EDM sigma grid (2N - 1 evaluations)."""
    return _edm(denoiser, x_T, num_steps, sigma_min, sigma_max, rho, heun=True)


def _edm(denoiser, x_T, num_steps, sigma_min, sigma_max, rho, heun):
    from diffmem.sde import edm_sigma_steps
    sig = jnp.asarray(edm_sigma_steps(num_steps, sigma_min, sigma_max, rho), x_T.dtype)
    full = lambda s, x: jnp.full(x.shape[:1], s, x.dtype)

    def step(x, i):
        t, t_next = sig[i], sig[i + 1]
        d = (x - denoiser(x, full(t, x))) / t
        x_next = x + (t_next - t) * d
        if heun:
            safe = jnp.where(t_next > 0, t_next, 1.0)
            d2 = (x_next - denoiser(x_next, full(safe, x))) / safe
            x_next = jnp.where(t_next > 0, x + (t_next - t) * 0.5 * (d + d2), x_next)
        return x_next, None

    x, _ = jax.lax.scan(step, x_T, jnp.arange(num_steps))
    return x
