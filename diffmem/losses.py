"""Per-example training losses (optax style: each returns one value per example; the caller
reduces).

Each loss calls the network once on the whole batch (a batched callable, so the same function serves
a plain `apply` and a vmapped sweep of models) and reduces every example's squared error over its
own pixels; only the random draws are made per example (vmapped over fold_in(key, i)).

    dsm / dsm_from_key                  denoising score matching on an SDE (the tutorial, toy
                                        models)
    ddpm_eps / ddpm_eps_from_key        Ho et al.'s epsilon loss on the discrete DDPM steps
    weighted_denoising[_from_key]       EDM's lambda(sigma) |D(x0 + sigma n, sigma) - x0|^2, with
                                        the noise levels and weights of a preconditioning (EDM, VP,
                                        VE or DDPM)

The `_from_key` variants draw every random input of example i from `fold_in(key, i)`. The image
losses reduce over pixels by `reduction`: "mean" (Ho et al.'s mean_flat, diffmem's default) or "sum"
(EDM's training loop, which Gu et al. use; = pixel count * mean, which changes the gradient scale
that Adam's epsilon sees).
"""
from __future__ import annotations

import math
from typing import Callable, Protocol

import jax
import jax.numpy as jnp

from diffmem.sde import SDE, ScoreFn, _bcast

__all__ = ["dsm", "sample_dsm_inputs", "dsm_from_key", "LossFn", "REDUCTIONS", "ddpm_eps",
           "ddpm_eps_from_key", "NoiseLevels", "weighted_denoising", "sample_denoising_inputs",
           "weighted_denoising_from_key", "blind_noise", "blind_denoising",
           "blind_denoising_from_key"]


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

    Example i uses `fold_in(key, i)` alone, so its draws do not depend on the batch size or on how
    the batch is padded or sharded.
    """
    def one(i):
        # One draw of 1 + prod(S) uniforms per example (cheaper than splitting keys): t from the
        # first, z from the rest through the normal quantile function.
        size = 1 + math.prod(x0.shape[1:])
        u = jax.random.uniform(jax.random.fold_in(key, i), (size,), x0.dtype,
                               minval=jnp.finfo(x0.dtype).tiny, maxval=1.0)
        t = sde.t_min + (sde.t_max - sde.t_min) * u[0]
        return t, jax.scipy.special.ndtri(u[1:]).reshape(x0.shape[1:])
    return jax.vmap(one)(jnp.arange(x0.shape[0]))


def dsm_from_key(score_fn: ScoreFn, x0: jax.Array, key: jax.Array, sde: SDE) -> jax.Array:
    """`dsm` with its t and noise drawn from `key`: (B,) per-example losses."""
    t, z = sample_dsm_inputs(key, x0, sde)
    return dsm(score_fn, x0, t, z, sde)


LossFn = Callable[..., jax.Array]


# ------------------------------------------------------------------------------------- image losses
def _per_example_keys(key: jax.Array, n: int) -> jax.Array:
    return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(n))


REDUCTIONS = ("mean", "sum")


def _per_example(v: jax.Array, reduction: str = "mean") -> jax.Array:
    """(B, *S) -> (B,): each example's values averaged ("mean") or summed ("sum") over its
    pixels."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"Unknown loss reduction {reduction!r}; valid: {list(REDUCTIONS)}.")
    flat = jnp.reshape(v, (v.shape[0], -1))
    return jnp.mean(flat, axis=-1) if reduction == "mean" else jnp.sum(flat, axis=-1)


def ddpm_eps(eps_model: Callable[[jax.Array, jax.Array], jax.Array], x0: jax.Array, t: jax.Array,
             noise: jax.Array, alpha_bar: jax.Array, reduction: str = "mean") -> jax.Array:
    """Ho et al.'s simple loss: mean_j (eps_theta(x_t, t) - eps)_j^2, x_t = sqrt(ab_t) x0 + sqrt(1 -
    ab_t) eps.

    Args:
      eps_model: batched epsilon predictor (x_t (B,*S), t (B,) integer steps 0..T-1) -> (B,*S).
      x0: (B,*S). t: (B,) int32 in [0, T). noise: (B,*S). alpha_bar: (T,) cumulative products.
      reduction: "mean" (Ho et al.) or "sum" over each example's pixels.
    Returns (B,).
    """
    ab = alpha_bar[t]
    xt = _bcast(jnp.sqrt(ab), x0) * x0 + _bcast(jnp.sqrt(1.0 - ab), x0) * noise
    return _per_example((eps_model(xt, t) - noise) ** 2, reduction)


def ddpm_eps_from_key(eps_model, x0: jax.Array, key: jax.Array, alpha_bar: jax.Array,
                      reduction: str = "mean") -> jax.Array:
    """`ddpm_eps` with t ~ U{0..T-1} and eps ~ N(0, I) drawn per example from fold_in(key, i)."""
    def draw(k):
        kt, kn = jax.random.split(k)
        return (jax.random.randint(kt, (), 0, alpha_bar.shape[0]),
                jax.random.normal(kn, x0.shape[1:], x0.dtype))
    t, noise = jax.vmap(draw)(_per_example_keys(key, x0.shape[0]))
    return ddpm_eps(eps_model, x0, t, noise, alpha_bar, reduction)


class NoiseLevels(Protocol):
    """What the EDM-family loss needs from a preconditioning (any of `diffmem.precond`'s)."""

    def sample_sigma(
        self, key: jax.Array, shape: tuple[int, ...] = (), dtype=jnp.float32
    ) -> jax.Array: ...

    def loss_weight(self, sigma: jax.Array) -> jax.Array: ...


def weighted_denoising(denoiser: Callable[[jax.Array, jax.Array], jax.Array], x0: jax.Array,
                       sigma: jax.Array, noise: jax.Array, weight: jax.Array,
                       reduction: str = "mean") -> jax.Array:
    """EDM-family loss: weight_i * mean_j (or sum_j) (D(x0 + sigma n, sigma) - x0)_ij^2, per
    example.

    Args:
      denoiser: batched D(x (B,*S), sigma (B,)) -> (B,*S). x0: (B,*S) clean data. sigma: (B,) noise
      levels. noise: (B,*S) standard normal n. weight: (B,). reduction: "sum" over pixels as EDM's
      training loop (Gu et al.), or "mean" (1 / pixel count of it).
    Returns:
      (B,) per-example losses.
    """
    d = denoiser(x0 + _bcast(sigma, x0) * noise, sigma)
    return weight * _per_example((d - x0) ** 2, reduction)


def sample_denoising_inputs(key: jax.Array, x0: jax.Array, levels: NoiseLevels
                            ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-example sigma ~ levels.sample_sigma, weight = levels.loss_weight(sigma) and n ~ N(0, I).

    Example i draws from `fold_in(key, i)` alone (split into a sigma key and a noise key), so its
    draws do not depend on the batch size or on how the batch is padded or sharded. Returns sigma
    (B,), weight (B,) and noise (B, *S), in x0's dtype.
    """
    def draw(k):
        ks, kn = jax.random.split(k)
        return levels.sample_sigma(ks, (), x0.dtype), jax.random.normal(kn, x0.shape[1:], x0.dtype)
    sigma, noise = jax.vmap(draw)(_per_example_keys(key, x0.shape[0]))
    return sigma, levels.loss_weight(sigma).astype(x0.dtype), noise


def weighted_denoising_from_key(denoiser, x0: jax.Array, key: jax.Array, levels: NoiseLevels,
                                reduction: str = "mean") -> jax.Array:
    """`weighted_denoising` with sigma, its weight and the noise drawn per example from fold_in(key,
    i).

    `levels` is a preconditioning (`diffmem.precond.make("edm" | "vp" | "ve" | "ddpm")`): its
    training noise-level distribution and loss weight define the loss (Karras et al., Table 1).
    Returns (B,).
    """
    sigma, weight, noise = sample_denoising_inputs(key, x0, levels)
    return weighted_denoising(denoiser, x0, sigma, noise, weight, reduction)


# ------------------------------------------------------------------- blind (Kadkhodaie et al. 2024)
def blind_noise(
    key: jax.Array, x0: jax.Array, max_sigma_255: float = 255.0
) -> tuple[jax.Array, jax.Array]:
    """Kadkhodaie et al.'s blind noise (`add_noise_torch`): per example u ~ U(0, 1), sigma = (u
    sqrt(max_sigma_255))^2 / 255 (so sqrt(255 sigma) ~ U[0, sqrt(max_sigma_255)]), z ~ N(0, I), both
    from fold_in(key, i). Images in [0, 1] units. Returns sigma (B,), z (B, *S)."""
    def draw(k):
        ku, kz = jax.random.split(k)
        u = jax.random.uniform(ku, (), x0.dtype)
        return (u * math.sqrt(max_sigma_255)) ** 2 / 255.0, jax.random.normal(
            kz, x0.shape[1:], x0.dtype
        )

    return jax.vmap(draw)(_per_example_keys(key, x0.shape[0]))


def blind_denoising(residual: jax.Array, noise: jax.Array) -> jax.Array:
    """Per-example summed squared error of the residual f(x0 + n) against the noise n = sigma z:
    (B,). The trainer's batch mean is then their MSELoss(reduction='sum') / batch_size."""
    return jnp.sum(jnp.reshape((residual - noise) ** 2, (noise.shape[0], -1)), axis=-1)


def blind_denoising_from_key(residual_fn: Callable, x0: jax.Array, key: jax.Array, *,
                             copies: int = 1,
                             max_sigma_255: float = 255.0) -> tuple[jax.Array, object]:
    """The blind loss of a residual network `residual_fn(y (B*copies, *S)) -> (f, aux)` (aux: e.g.
    updated batch statistics), x0 (B, *S) in [0, 1]. Example i is repeated `copies` times (rows
    i*copies...), each copy with its own sigma and noise (Kadkhodaie et al. tile small training sets
    into full batches). Returns ((B,) mean over an example's copies of `blind_denoising`, aux)."""
    xr = jnp.repeat(x0, copies, axis=0)
    sigma, z = blind_noise(key, xr, max_sigma_255)
    noise = _bcast(sigma, xr) * z
    f, aux = residual_fn(xr + noise)
    return jnp.mean(blind_denoising(f, noise).reshape(x0.shape[0], copies), axis=1), aux
