"""Per-example training losses (optax style: each returns one value per example; the caller reduces).

Every loss is written for one example and vmapped; the network is passed as a batched callable so the
same function serves a plain `apply` and a vmapped sweep of models.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffmem.sde import SDE, ScoreFn, _bcast


def dsm(score_fn: ScoreFn, x0: jax.Array, t: jax.Array, noise: jax.Array, sde: SDE) -> jax.Array:
    """Denoising score matching of Song et al. / the tutorial, lambda(t) = std(t)^2.

    loss_i = mean_j (s(x_t, t)_j std(t) + z_j)^2 with x_t = s(t) x0 + std(t) z, i.e. the tutorial's
    `mean((score * std + z)^2)` before its batch mean.

    Args:
      score_fn: batched score s(x (B,*S), t (B,)) -> (B,*S).
      x0: (B, *S) clean data. t: (B,) times. noise: (B, *S) standard normal z.
    Returns:
      (B,) per-example losses.
    """
    std = sde.marginal_std(t)
    xt = _bcast(sde.mean_scale(t), x0) * x0 + _bcast(std, x0) * noise
    residual = score_fn(xt, t) * _bcast(std, x0) + noise
    return jnp.mean(jnp.reshape(residual**2, (x0.shape[0], -1)), axis=-1)


def sample_dsm_inputs(key: jax.Array, x0: jax.Array, sde: SDE) -> tuple[jax.Array, jax.Array]:
    """Draw t ~ U(t_min, t_max) (B,) and z ~ N(0, I) (B, *S) for `dsm`.

    Example i uses `fold_in(key, i)` alone, so its draws do not depend on the batch size or on how the
    batch is padded or sharded.
    """
    def one(i):
        kt, kz = jax.random.split(jax.random.fold_in(key, i))
        t = jax.random.uniform(kt, (), x0.dtype, sde.t_min, sde.t_max)
        return t, jax.random.normal(kz, x0.shape[1:], x0.dtype)
    return jax.vmap(one)(jnp.arange(x0.shape[0]))


def dsm_from_key(score_fn: ScoreFn, x0: jax.Array, key: jax.Array, sde: SDE) -> jax.Array:
    """`dsm` with its t and noise drawn from `key`: (B,) per-example losses."""
    t, z = sample_dsm_inputs(key, x0, sde)
    return dsm(score_fn, x0, t, z, sde)


LossFn = Callable[..., jax.Array]
