"""One step of each sampler family, shared by the samplers (`diffmem.sampling`, which re-exports
these) and by the measurements that run partial trajectories (critical times, Jacobian trajectory
states).

    # Song et al. (2021) eq. 12, from alpha_bar a to a_next
    x_next, x0 = ddim_step(D, x, a, a_next)
    x_next, mean = em_step(s, sde, x, t, dt, z)        # reverse-SDE Euler-Maruyama (the tutorial's)
    x_next = edm_step(D, x, t, t_next, second_order)   # Karras et al. (2022) Algorithm 1, one step

Per-example levels: `a`, `a_next`, `t` and `dt` may be scalars or (B,) arrays (one per example of x
(B, *S)).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffmem.sde import SDE, Denoiser, ScoreFn, _bcast

__all__ = ["ddim_step", "em_step", "edm_slope", "edm_step"]


def _per_example(v, x: jax.Array) -> jax.Array:
    """A scalar as it is, a (B,) array reshaped to broadcast against x (B, *S)."""
    return _bcast(v, x) if jnp.ndim(v) else v


def ddim_step(denoiser: Denoiser, x: jax.Array, a, a_next, *, sigma=0.0,
              clip_x0: bool = False) -> tuple[jax.Array, jax.Array]:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) from the VP state x = sqrt(a) x0 + sqrt(1 - a) eps at
    alpha_bar `a` to alpha_bar `a_next`, without its noise term: returns (x_next, x0).

    x0 = D(x / sqrt(a), sqrt((1 - a) / a)); eps = (x - sqrt(a) x0) / sqrt(1 - a) (before clipping x0
        to
    [-1, 1] when clip_x0); x_next = sqrt(a_next) x0 + sqrt(max(1 - a_next - sigma^2, 0)) eps. sigma:
    the step's noise scale (eta > 0; the caller adds sigma z), 0 for deterministic DDIM.
    """
    # sqrt(a) twice, not one shared value: XLA then fuses the network's input as the samplers always
    # had it, and their samples stay bit for bit the same.
    noise_level = jnp.full(x.shape[:1], jnp.sqrt((1 - a) / a), x.dtype)
    x0 = denoiser(x / _per_example(jnp.sqrt(a), x), noise_level)
    eps = (x - _per_example(jnp.sqrt(a), x) * x0) / _per_example(jnp.sqrt(1 - a), x)
    x0 = jnp.clip(x0, -1, 1) if clip_x0 else x0
    x_next = (_per_example(jnp.sqrt(a_next), x) * x0
              + _per_example(jnp.sqrt(jnp.maximum(1 - a_next - sigma**2, 0.0)), x) * eps)
    return x_next, x0


def em_step(score_fn: ScoreFn, sde: SDE, x: jax.Array, t: jax.Array, dt,
            z: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """One Euler-Maruyama step of the reverse SDE dx = [f - g^2 s] dt + g dw at times t ((B,) or
    (1,) shared), step dt > 0 (a scalar or (B,)): mean = x + (g^2 s(x, t) - f(x, t)) dt, x_next =
    mean + sqrt(dt) g z. Returns (x_next, mean); x_next is the mean when z is None."""
    g = _bcast(sde.diffusion(t), x)
    dt = _per_example(dt, x)
    mean = (x + (g**2 * score_fn(x, t) - sde.drift(x, t)) * dt).astype(x.dtype)
    if z is None:
        return mean, mean
    return mean + jnp.sqrt(dt) * g * z, mean


def edm_slope(denoiser: Denoiser, x: jax.Array, sigma) -> jax.Array:
    """dx/dsigma = (x - D(x; sigma)) / sigma of the probability-flow ODE (Karras et al. eq. 3)."""
    return (x - denoiser(x, jnp.full(x.shape[:1], sigma, x.dtype))) / sigma


def edm_step(denoiser: Denoiser, x: jax.Array, t, t_next, second_order: bool) -> jax.Array:
    """One step of Karras et al. (2022) Algorithm 1 from sigma t to t_next: Euler, with Heun's
    second-order correction when `second_order` (t_next > 0)."""
    d = edm_slope(denoiser, x, t)
    x_next = x + (t_next - t) * d
    if second_order:
        x_next = x + (t_next - t) * 0.5 * (d + edm_slope(denoiser, x_next, t_next))
    return x_next
