"""Samplers. Every sampler takes a batched score s(x, t) or denoiser D(x, sigma) and per-sample integer
seeds: sample i's noise comes from `key(seed_i)` alone, so any split of a seed range across batches,
devices or jobs gives identical samples. Score functions are called with t of shape (1,) (one time for the
whole batch); `diffmem.sde` functions and the networks broadcast it.
"""
from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp

from diffmem.sde import SDE, ScoreFn, _bcast


def _keys(seeds: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))


def initial_noise(seeds: jax.Array, shape: tuple[int, ...], std: float = 1.0) -> jax.Array:
    """(B, *shape) Gaussian starts, row i from seed i alone."""
    return std * jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(_keys(seeds))


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
        noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), (num_steps,) + x_init.shape[1:],
                                                     x_init.dtype))(keys)
        noise = jnp.moveaxis(noise, 1, 0)

    def step(x, i):
        t = jnp.full((1,), ts[i], x.dtype)  # one time for the whole batch, broadcast by score_fn
        g = _bcast(sde.diffusion(t), x)
        mean = x + (g**2 * score_fn(x, t) - sde.drift(x, t)) * dt
        if upfront:
            z = noise[i]
        else:
            z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), (num_steps,) + x.shape[1:],
                                                     x.dtype)[i])(keys)
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
