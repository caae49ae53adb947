"""Kadkhodaie & Simoncelli's sampler: stochastic coarse-to-fine ascent of a blind denoiser's
implicit prior.

    result = kadkhodaie_simoncelli(denoiser, shape, seeds, h0=0.01, beta=0.01, sigma_L=0.01)

`diffmem.sampling` registers it as "ks" (with its per-sample convergence record) and re-exports
these names.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffmem.sample_noise import per_sample_keys
from diffmem.sde import Denoiser

__all__ = ["KSResult", "kadkhodaie_simoncelli", "ks_recursion_iterations"]


class KSResult(NamedTuple):
    """Output of `kadkhodaie_simoncelli`: samples (B, *S), iterations (B,) int (updates taken),
    sigma (B,) (the last estimate ||f(y)|| / sqrt(N)) and converged (B,) bool (sigma reached
    sigma_L; False when the cap max_iters stopped it or sigma exceeded 2, upstream's "not
    converging")."""
    samples: jax.Array
    iterations: jax.Array
    sigma: jax.Array
    converged: jax.Array


def kadkhodaie_simoncelli(denoiser: Denoiser, shape: tuple[int, ...], key_or_seeds, *,
                          h0: float = 0.01, beta: float = 0.01, sigma_0: float = 1.0,
                          sigma_L: float = 0.01, init_mean: float = 0.0, fixed_h: bool = False,
                          max_iters: int = 3000) -> KSResult:
    """Kadkhodaie & Simoncelli (2021) Algorithm 1, unconstrained synthesis (`univ_inv_sol`, M = 0).

    Units are the denoiser's (Kadkhodaie: [0, 1] images, sigma_0 = 1). denoiser: D(y (B,*S), sigma
    (B,)); a blind net ignores sigma, others get the current estimate sigma = ||f(y)|| / sqrt(N),
    f(y) = y - D(y). Per sample (vmapped `lax.while_loop`, at most max_iters updates): y0 =
    init_mean + sigma_0 n0 with n0 from fold_in(key, 0), and the z of update t from fold_in(key, t),
    so two models given the same seeds see the same noise stream, whatever their stopping times.
    """
    keys = per_sample_keys(key_or_seeds)
    n = math.prod(shape)

    def f(y, sigma):
        return y - denoiser(y[None], sigma[None])[0]

    def one(key):
        y = init_mean + sigma_0 * jax.random.normal(jax.random.fold_in(key, 0), shape)
        sigma = jnp.linalg.norm(f(y, jnp.asarray(sigma_0, y.dtype))) / math.sqrt(n)

        def cond(c):
            _, sigma, t = c
            return (sigma > sigma_L) & (sigma <= 2.0) & (t <= max_iters)

        def body(c):
            y, sigma, t = c
            tf = t.astype(y.dtype)
            h = h0 if fixed_h else h0 * tf / (1.0 + h0 * (tf - 1.0))
            d = f(y, sigma)
            sigma = jnp.linalg.norm(d) / math.sqrt(n)
            gamma = sigma * jnp.sqrt(jnp.maximum((1.0 - beta * h) ** 2 - (1.0 - h) ** 2, 0.0))
            z = jax.random.normal(jax.random.fold_in(key, t), shape, y.dtype)
            return y - h * d + gamma * z, sigma, t + 1

        y, sigma, t = jax.lax.while_loop(cond, body, (y, sigma, jnp.asarray(1, jnp.int32)))
        return y - f(y, sigma), t - 1, sigma, sigma <= sigma_L

    samples, iters, sigma, ok = jax.vmap(one)(keys)
    return KSResult(samples, iters, sigma, ok)


def ks_recursion_iterations(sigma_start: float, *, h0: float = 0.01, beta: float = 0.01,
                            sigma_L: float = 0.01, max_iters: int = 100_000) -> int:
    """Updates the sampler takes when the effective noise follows sigma_t = (1 - beta h_t)
    sigma_{t-1} exactly (the loop tests the estimate of the previous update's input): ~662 from 1 to
    0.01 with the defaults."""
    s_prev, s, t = sigma_start, sigma_start, 1
    while s_prev > sigma_L and t <= max_iters:
        h = h0 * t / (1.0 + h0 * (t - 1))
        s_prev, s = s, (1.0 - beta * h) * s
        t += 1
    return t - 1
