"""Per-sample randomness of every sampler: keys, starting points and step noise from each sample's
seed alone.

Sample i's start comes from `fold_in(key(seed_i), 0)` and its noise at step j from
`fold_in(fold_in(key(seed_i), 1), j)`, never from a batch-level key, so sample i depends only on its
seed. `diffmem.sampling` re-exports these names.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffmem.errors import InputError
from diffmem.sde import SDE

__all__ = ["per_sample_keys", "initial_noise", "step_noise", "tutorial_init"]


def per_sample_keys(key_or_seeds) -> jax.Array:
    """(B,) typed keys: `jax.random.key(seed_i)` for integer seeds (B,), or a (B,) typed key array
    as is.

    Seeds are read as uint32 (0 <= seed < 2**32), so the same seed gives the same key with or
    without x64.
    """
    if isinstance(key_or_seeds, jax.Array) and jnp.issubdtype(
        key_or_seeds.dtype, jax.dtypes.prng_key
    ):
        if key_or_seeds.ndim != 1:
            raise InputError(
                f"Expected one key per sample, a (B,) key array; got shape {key_or_seeds.shape}. "
                "A single batch-level key would tie each sample to the batch: pass seeds (B,)."
            )
        return key_or_seeds
    if not isinstance(key_or_seeds, jax.core.Tracer):
        seeds = np.asarray(key_or_seeds)
        if seeds.ndim != 1 or not np.issubdtype(seeds.dtype, np.integer):
            raise InputError(
                f"Expected per-sample integer seeds of shape (B,); got {seeds.dtype} {seeds.shape}."
            )
        if seeds.size and (seeds.min() < 0 or seeds.max() >= 2**32):
            raise InputError("Seeds must lie in [0, 2**32): each is read as a uint32.")
    seeds = jnp.asarray(key_or_seeds)
    if seeds.ndim != 1 or not jnp.issubdtype(seeds.dtype, jnp.integer):
        raise InputError(
            f"Expected per-sample integer seeds of shape (B,); got {seeds.dtype} {seeds.shape}."
        )
    return jax.vmap(jax.random.key)(seeds.astype(jnp.uint32))


def initial_noise(
    key_or_seeds, shape: tuple[int, ...], std: float = 1.0, dtype=jnp.float32
) -> jax.Array:
    """(B, *shape) draws of N(0, std^2 I); row i from `fold_in(key(seed_i), 0)` alone."""
    keys = per_sample_keys(key_or_seeds)
    return std * jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape, dtype))(keys)


def step_noise(keys: jax.Array, step, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """(B, *shape) standard normals for sampler step `step`: row i from fold_in(fold_in(keys[i], 1),
    step)."""
    draw = lambda k: jax.random.normal(
        jax.random.fold_in(jax.random.fold_in(k, 1), step), shape, dtype
    )
    return jax.vmap(draw)(keys)


def tutorial_init(key_or_seeds, dim: int, sde: SDE, *, start: str = "tutorial") -> jax.Array:
    """Starting points (B, dim) at t_max, one per seed.

    start="tutorial": the tutorial's start, Gaussian draws normalised to unit norm and scaled to the
    sphere of radius marginal_std(t_max) (sigma_max for the VE SDE). start="prior": a plain draw
    from the SDE's Gaussian prior N(0, prior_std^2 I). Both use `initial_noise`, so sample i depends
    on seed i only.
    """
    z = initial_noise(key_or_seeds, (dim,))
    if start == "prior":
        return z * sde.prior_std()
    if start == "tutorial":
        return (
            z
            / jnp.linalg.norm(z, axis=-1, keepdims=True)
            * sde.marginal_std(jnp.asarray(sde.t_max))
        )
    raise InputError(f"Unknown start {start!r}; choose 'tutorial' or 'prior'.")


def _noise_keys(key_or_seeds, needed: bool, why: str) -> jax.Array | None:
    """Per-sample keys for a sampler whose noise is optional: None when not `needed`, else
    `per_sample_keys`."""
    if not needed:
        return None
    if key_or_seeds is None:
        raise InputError(f"{why}: pass per-sample seeds (B,).")
    return per_sample_keys(key_or_seeds)


def _check_batch(x: jax.Array, keys: jax.Array | None, what: str) -> None:
    if x.ndim < 2:
        raise InputError(f"{what} must be batched, (B, *S); got shape {x.shape}.")
    if keys is not None and keys.shape[0] != x.shape[0]:
        raise InputError(
            f"{what} has {x.shape[0]} rows but {keys.shape[0]} seeds were given: one seed per "
            f"sample."
        )
