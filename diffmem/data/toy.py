"""Low-dimensional data with exact answers: the tutorial's circle and Gaussian mixtures.

Gaussian mixtures are the library's oracle: under any noise process of `diffmem.sde` the noisy
marginal p_t is again a mixture (means s mu_c, covariances s^2 (Sigma_c + sigma^2 I)), so scores,
log-densities and the optimal denoiser are known in closed form. Everything here is written in jnp
and stays exact in float64.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import losses
from diffmem.data.subsets import check_k, first_k_of_permutation
from diffmem.sde import SDE, per_sample

__all__ = ["CIRCLE_POOL_SIZE", "CIRCLE_SEED", "circle_pool", "circle_subset", "GaussianMixture"]

CIRCLE_POOL_SIZE = 60_000
CIRCLE_SEED = 9


def circle_pool(
    num: int = CIRCLE_POOL_SIZE, radius: float = 1.0, seed: int = CIRCLE_SEED
) -> np.ndarray:
    """The tutorial's pool: `num` points at uniform angles on a circle, (num, 2) float32.

    Angles come from `np.random.RandomState(seed).uniform(0, 2 pi, num)`, the tutorial's exact
    draws.
    """
    angles = np.random.RandomState(seed).uniform(0, 2 * np.pi, num)
    return (radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)).astype(np.float32)


def circle_subset(k: int, seed: int = CIRCLE_SEED, pool_size: int = CIRCLE_POOL_SIZE) -> np.ndarray:
    """The K training points: the first K of a seeded permutation of the 60,000-point pool, (K, 2)
    float32.

    (The tutorial draws this permutation with torch's generator; diffmem uses numpy's, so the K
    points differ from the tutorial's but follow the same recipe.)
    """
    check_k(k, pool_size, "the circle pool")
    return circle_pool(pool_size, seed=CIRCLE_SEED)[first_k_of_permutation(pool_size, k, seed)]


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """A mixture of C Gaussians in d dimensions with full covariances.

    Attributes:
      weights: (C,) mixture weights, summing to 1. means: (C, d). covs: (C, d, d) symmetric positive
      semi-definite (zero covariances give an empirical distribution).
    """
    weights: jax.Array
    means: jax.Array
    covs: jax.Array

    @classmethod
    def isotropic(cls, means, stds, weights=None) -> "GaussianMixture":
        """Mixture of N(mu_c, std_c^2 I): means (C, d), stds (C,) or scalar, weights (C,) or
        uniform."""
        means = jnp.asarray(means)
        c, d = means.shape
        stds = jnp.broadcast_to(jnp.asarray(stds, means.dtype), (c,))
        w = (
            jnp.full((c,), 1.0 / c, means.dtype)
            if weights is None
            else jnp.asarray(weights, means.dtype)
        )
        return cls(w, means, stds[:, None, None] ** 2 * jnp.eye(d, dtype=means.dtype))

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Draw (n, d) samples."""
        kc, kz = jax.random.split(key)
        comp = jax.random.choice(kc, self.weights.shape[0], (n,), p=self.weights)
        z = jax.random.normal(kz, (n, self.dim), self.means.dtype)
        chol = jnp.linalg.cholesky(self.covs + 1e-12 * jnp.eye(self.dim, dtype=self.means.dtype))
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z)

    def mean(self) -> jax.Array:
        return jnp.einsum("c,cd->d", self.weights, self.means)

    def covariance(self) -> jax.Array:
        m = self.mean()
        centred = self.means - m
        return jnp.einsum(
            "c,cij->ij", self.weights, self.covs + centred[:, :, None] * centred[:, None, :]
        )

    def noisy(self, sigma, scale=1.0) -> "GaussianMixture":
        """Law of scale * (x0 + sigma n): means scale mu_c, covariances scale^2 (Sigma_c + sigma^2
        I)."""
        eye = jnp.eye(self.dim, dtype=self.means.dtype)
        return GaussianMixture(
            self.weights, scale * self.means, scale**2 * (self.covs + sigma**2 * eye)
        )

    def _component_terms(self, x):
        """Per-component log weight + log N(x; mu_c, Sigma_c) and Sigma_c^{-1}(x - mu_c), for one x
        (d,)."""
        diff = x[None, :] - self.means  # (C, d)
        chol = jnp.linalg.cholesky(self.covs)
        # Sigma^-1 (x - mu)
        sol = jax.scipy.linalg.cho_solve((chol, True), diff[:, :, None])[..., 0]
        logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        quad = jnp.sum(diff * sol, axis=-1)
        logn = -0.5 * (self.dim * jnp.log(2 * jnp.pi) + logdet + quad)
        return jnp.log(self.weights) + logn, sol

    def logp(self, x: jax.Array) -> jax.Array:
        """log p(x) for x (B, d) -> (B,). Needs positive definite covariances."""
        return jax.vmap(lambda xi: jax.nn.logsumexp(self._component_terms(xi)[0]))(x)

    def score(self, x: jax.Array) -> jax.Array:
        """grad log p(x) for x (B, d) -> (B, d)."""
        def one(xi):
            logits, sol = self._component_terms(xi)
            return -jnp.einsum("c,cd->d", jax.nn.softmax(logits), sol)
        return jax.vmap(one)(x)

    # --- closed forms under a noise process
    # -------------------------------------------------------------
    def denoiser(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        """Optimal denoiser E[x0 | x0 + sigma n = x] for x (B, d), sigma (B,) -> (B, d).

        Per component: mu_c + Sigma_c (Sigma_c + sigma^2 I)^{-1} (x - mu_c), weighted by the
        posterior of c.
        """
        def one(xi, s):
            noisy = self.noisy(s)
            logits, sol = noisy._component_terms(xi)
            post = jax.nn.softmax(logits)
            comp_means = self.means + jnp.einsum("cij,cj->ci", self.covs, sol)
            return jnp.einsum("c,cd->d", post, comp_means)
        sigma = per_sample(sigma, x)
        return jax.vmap(one)(x, sigma)

    def score_fn(self, sde: SDE):
        """Exact score of p_t under `sde`: a batched score_fn(x (B, d), t (B,)) -> (B, d)."""
        def score_fn(x, t):
            t = per_sample(t, x)
            return jax.vmap(
                lambda xi, ti: self.noisy(sde.sigma(ti), sde.mean_scale(ti)).score(xi[None])[0]
            )(x, t)

        return score_fn

    def logp_t(self, x: jax.Array, t: jax.Array, sde: SDE) -> jax.Array:
        """Exact log p_t(x) under `sde` for x (B, d), t (B,) or scalar -> (B,)."""
        t = per_sample(t, x)
        return jax.vmap(
            lambda xi, ti: self.noisy(sde.sigma(ti), sde.mean_scale(ti)).logp(xi[None])[0]
        )(x, t)

    def dsm_loss_floor(self, key: jax.Array, sde: SDE, num: int = 200_000) -> jax.Array:
        """Monte-Carlo value of the DSM loss (`diffmem.losses.dsm`, batch mean) at the exact score.

        This is the loss's minimum over all score functions (its irreducible part), the oracle a
        trained network is compared with. Returns (mean, standard error) over `num` draws of (t, x0,
        z).
        """
        k0, kl = jax.random.split(key)
        per_example = losses.dsm_from_key(self.score_fn(sde), self.sample(k0, num), kl, sde)
        return jnp.mean(per_example), jnp.std(per_example) / jnp.sqrt(num)
