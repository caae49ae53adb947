"""Training batches: a DataLoader-style shuffled epoch over each model's K examples, drawn from its
key.

    x0, valid, rows = make_batch(data, k, batch, step, key, padded_batch)

Each epoch (ceil(k / batch) steps) is a fresh uniform permutation drawn from fold_in(key, epoch), so
a resumed run replays exactly the batches an uninterrupted one would take.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["make_batch"]


def make_batch(data: jax.Array, k: jax.Array, batch: jax.Array, step: jax.Array, key: jax.Array,
               padded_batch: int) -> tuple[jax.Array, jax.Array]:
    """The batch of one model at `step`: a DataLoader-style shuffled epoch over its K examples.

    data: (K_max, *S), rows >= k are padding. Each epoch (ceil(k / batch) steps) is a fresh
    permutation drawn from fold_in(key, epoch). Returns x0 (padded_batch, *S), valid (padded_batch,)
    in {0, 1} and the rows of `data` taken (padded_batch,) int (to gather the examples' labels).
    """
    k_max = data.shape[0]
    steps_per_epoch = (k + batch - 1) // batch
    epoch, pos = step // steps_per_epoch, step % steps_per_epoch
    perm = _permutation(jax.random.fold_in(key, epoch), k, k_max)
    slot = pos * batch + jnp.arange(padded_batch)
    valid = (jnp.arange(padded_batch) < batch) & (slot < k)
    rows = perm[jnp.clip(slot, 0, k_max - 1)]
    return data[rows], valid.astype(data.dtype), rows


def _permutation(key: jax.Array, k: jax.Array, k_max: int) -> jax.Array:
    """A uniformly random order of rows 0..k-1, followed by the padding rows k..k_max-1: (k_max,)
    int32.

    A uniform permutation of all k_max rows (`jax.random.permutation`), then a stable sort that
    keeps the valid rows first, in their (uniform) relative order, and puts the padding rows after
    them in order.
    """
    perm = jax.random.permutation(key, k_max).astype(jnp.int32)
    return perm[jnp.argsort(jnp.where(perm < k, -1, perm), stable=True)]
