"""The dataset pool a config's K-subsets are drawn from, loaded once per process.

    pool = pools.load_pool(config)            # (N, *S) float32, read-only, shared by every stage
    labels = pools.load_pool_labels(config)   # (N,) int class labels, or None

`diffmem.builders` re-exports these; `builders.model_specs` draws the members' subsets from the
pool.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffmem import configlib
from diffmem.data import toy

__all__ = ["load_pool", "load_pool_labels", "molrg_from_config", "gmm_from_config"]

_POOLS: dict = {}   # data config key -> read-only pool (the latest few)
_POOLS_KEPT = 4


def load_pool(config: ml_collections.ConfigDict) -> np.ndarray:
    """The pool the K-subsets are drawn from, (N, *S) float32.

    Loaded once per process for each data config (`config.data` but its K, with the size and mtime
    of a local source file or folder) and returned read-only: every stage of a study, every
    `Workdir` and its sub-workdirs share one copy. Copy it to change it."""
    key = _pool_key(config.data)
    pool = _POOLS.get(key)
    if pool is None:
        pool = np.asarray(_load_pool(config))
        pool.flags.writeable = False
        _POOLS[key] = pool
        while len(_POOLS) > _POOLS_KEPT:
            _POOLS.pop(next(iter(_POOLS)))
    return pool


def _pool_key(d: ml_collections.ConfigDict) -> str:
    data = {k: v for k, v in d.to_dict().items() if k != "k"}
    stamps = []
    for name in ("source", "data_dir"):
        value = str(data.get(name) or "")
        for path in {value, value.split(":", 1)[-1]}:
            if path and os.path.exists(path):
                st = os.stat(path)
                stamps.append([path, st.st_size, st.st_mtime_ns])
    return json.dumps([data, stamps], sort_keys=True, default=str)


def _load_pool(config: ml_collections.ConfigDict) -> np.ndarray:
    d = config.data
    if d.name == "images":
        return _load_images(d).images
    if d.name == "circle":
        return toy.circle_pool(d.pool_size)
    if d.name == "gmm":
        return np.asarray(
            gmm_from_config(config).sample(jax.random.key(d.subset_seed), d.pool_size)
        )
    if d.name == "molrg":
        return _molrg_pool(config)[0]
    raise configlib.ConfigError(
        f"Unknown data.name {d.name!r}; valid: ['circle', 'gmm', 'images', 'molrg']."
    )


def load_pool_labels(config: ml_collections.ConfigDict) -> np.ndarray | None:
    """The pool's (N,) int class labels (image datasets that have them), else None."""
    if config.data.name == "molrg":
        return _molrg_pool(config)[1]
    return _load_images(config.data).labels if config.data.name == "images" else None


def molrg_from_config(config: ml_collections.ConfigDict):
    """The MoLRG of configs/molrg.py: n = 3 res^2, K classes of dimension d, basis from
    `data.basis_seed`."""
    from diffmem.data import molrg
    d = config.data
    return molrg.MoLRG.make(3 * d.resolution**2, d.classes, d.dim, seed=d.basis_seed)


def _molrg_pool(config: ml_collections.ConfigDict):
    """(pool (classes * per_class, res, res, 3), labels): `data.per_class` samples per class, in
    class order."""
    d = config.data
    return molrg_from_config(config).sample(
        d.per_class, seed=d.sample_seed, shape=(d.resolution, d.resolution, 3)
    )


def _load_images(d):
    from diffmem.data import images, synthetic
    if synthetic.is_synthetic(d.source):  # C-alpha / discs / prepared CelebA-80 and LSUN crops
        return synthetic.load(d.source, image_size=d.image_size or None)
    return images.load_images(d.source, split=d.split, data_dir=d.data_dir or None,
                              image_size=d.image_size or None, center_crop_images=d.center_crop,
                              to_grayscale=d.grayscale)


def gmm_from_config(config: ml_collections.ConfigDict) -> toy.GaussianMixture:
    """The ground-truth mixture of configs/gmm.py: means on a circle in the first two
    coordinates."""
    d = config.data
    angles = 2 * np.pi * np.arange(d.components) / d.components
    means = np.zeros((d.components, d.dim), np.float32)
    means[:, 0], means[:, 1 % d.dim] = d.radius * np.cos(angles), d.radius * np.sin(angles)
    return toy.GaussianMixture.isotropic(jnp.asarray(means), d.std)


