"""Assemble an experiment's parts from its config: noise process, network, training sets, loss.

This is the only place that reads a ConfigDict to build library objects; the objects themselves take
explicit arguments. A config describes a *sweep* of models when `data.k` (or `seed`) is a tuple.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffmem import configlib, losses, nets, precond
from diffmem import sde as sde_lib
from diffmem.data import toy


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One member of a sweep: its name (checkpoint directory), K, seed and training set (K, *S)."""
    name: str
    k: int
    seed: int
    data: np.ndarray
    batch_size: int


def is_image(config: ml_collections.ConfigDict) -> bool:
    return config.data.name == "images"


def build_sde(config: ml_collections.ConfigDict) -> sde_lib.SDE:
    if "sde" not in config:
        raise configlib.ConfigError("This config has no 'sde' section (image configs use 'diffusion').")
    fields = dict(config.sde)
    return sde_lib.make_sde(fields.pop("name"), **fields)


def build_model(config: ml_collections.ConfigDict, data_shape: tuple[int, ...]):
    """The Linen module named by `config.model.name`, with explicit fields."""
    m = config.model
    if m.name == "mlp":
        if len(data_shape) != 1:
            raise configlib.ConfigError(f"model.name='mlp' needs vector data; got data of shape {data_shape}.")
        return nets.ScoreMLP(marginal_std=build_sde(config).marginal_std, out_dim=data_shape[0],
                             num_layers=m.num_layers, hidden=m.hidden, embed=m.embed,
                             fourier_scale=m.fourier_scale)
    if m.name == "ddpm":
        return nets.DDPMUNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                             attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, num_groups=m.num_groups)
    raise configlib.ConfigError(f"Unknown model.name {m.name!r}; valid: ['mlp', 'ddpm'].")


def load_pool(config: ml_collections.ConfigDict) -> np.ndarray:
    """The pool the K-subsets are drawn from, (N, *S) float32."""
    d = config.data
    if d.name == "images":
        from diffmem.data import images
        return images.load_images(d.source, split=d.split, data_dir=d.data_dir or None,
                                  image_size=d.image_size or None, center_crop_images=d.center_crop,
                                  to_grayscale=d.grayscale).images
    if d.name == "circle":
        return toy.circle_pool(d.pool_size)
    if d.name == "gmm":
        return np.asarray(gmm_from_config(config).sample(jax.random.key(d.subset_seed), d.pool_size))
    raise configlib.ConfigError(f"Unknown data.name {d.name!r}; valid: ['circle', 'gmm', 'images'].")


def gmm_from_config(config: ml_collections.ConfigDict) -> toy.GaussianMixture:
    """The ground-truth mixture of configs/gmm.py: means on a circle in the first two coordinates."""
    d = config.data
    angles = 2 * np.pi * np.arange(d.components) / d.components
    means = np.zeros((d.components, d.dim), np.float32)
    means[:, 0], means[:, 1 % d.dim] = d.radius * np.cos(angles), d.radius * np.sin(angles)
    return toy.GaussianMixture.isotropic(jnp.asarray(means), d.std)


def model_specs(config: ml_collections.ConfigDict) -> list[ModelSpec]:
    """The sweep's members: the product of `data.k` values and `seed` values."""
    ks, seeds = configlib.sweep(config.data.k), configlib.sweep(config.seed)
    pool = load_pool(config)
    from diffmem.data.subsets import check_k, first_k_of_permutation
    specs = []
    for k in ks:
        check_k(k, pool.shape[0], f"the {config.data.name} pool")
        subset = pool[first_k_of_permutation(pool.shape[0], k, config.data.subset_seed)]
        for seed in seeds:
            name = str(k) if len(seeds) == 1 else f"{k}_s{seed}"
            specs.append(ModelSpec(name, k, seed, subset, min(config.batch_size, k)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise configlib.ConfigError(f"The sweep repeats a model: {names}.")
    return specs


def build_loss(config: ml_collections.ConfigDict, model) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """Per-example loss `loss(params, x0 (B, *S), key) -> (B,)` of the config's network."""
    if config.loss.name == "ddpm":
        d = config.diffusion
        ab = jnp.asarray(sde_lib.ddpm_alpha_bar(d.timesteps, d.beta_start, d.beta_end), jnp.float32)

        def loss(params, x0, key):
            k_loss, k_drop = jax.random.split(key)
            eps = lambda x, t: model.apply(params, x, t, train=True, rngs={"dropout": k_drop})
            return losses.ddpm_eps_from_key(eps, x0, k_loss, ab)
        return loss
    if config.loss.name == "dsm":
        sde = build_sde(config)

        def loss(params, x0, key):
            return losses.dsm_from_key(lambda x, t: model.apply(params, x, t), x0, key, sde)
        return loss
    raise configlib.ConfigError(f"Unknown loss.name {config.loss.name!r}; valid: ['dsm', 'ddpm'].")


def score_fn(config: ml_collections.ConfigDict, model, params) -> sde_lib.ScoreFn:
    """The trained network as a batched score function s(x, t)."""
    return lambda x, t: model.apply(params, x, t)


def denoiser(config: ml_collections.ConfigDict, model, params) -> sde_lib.Denoiser:
    """A trained image network as the common denoiser D(x, sigma)."""
    if config.model.name == "ddpm":
        d = config.diffusion
        return precond.ddpm_denoiser(lambda x, t: model.apply(params, x, t),
                                     sde_lib.ddpm_alpha_bar(d.timesteps, d.beta_start, d.beta_end))
    raise configlib.ConfigError(f"No denoiser view for model.name {config.model.name!r}.")
