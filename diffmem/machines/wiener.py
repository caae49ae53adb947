"""The Wiener (Gaussian, linear) filter of a training set, and its sensitivity heatmaps.

With mu and Sigma the mean and covariance of the training set (the empirical distribution's: 1/N, so
this is the best *linear* denoiser of exactly the data the other machines see), Sigma = U diag(S)
U^T:

    D(x; sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu) = mu + U diag(S / (S + sigma^2)) U^T (x
        - mu)

the posterior mean when the data are Gaussian N(mu, Sigma) (Niedoba et al.'s GaussianDenoiser, the
linear optimum of Lukoianov et al. 2025). Its rows W_sigma[i] are a training- and network-free
sensitivity map of output pixel i (`wiener_heatmap`), usable as PSPC-flex heatmaps.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffmem.errors import InputError

__all__ = ["Gaussian", "moments", "gaussian", "wiener_from_moments", "wiener_denoiser",
           "wiener_gain", "wiener_heatmap"]


class Gaussian(NamedTuple):
    """mean (D,), eigenvalues S (D,) >= 0 and eigenvectors U (D, D) of the covariance, float64
    numpy."""
    mean: np.ndarray
    eigvals: np.ndarray
    eigvecs: np.ndarray


def moments(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (1/N) of the flattened training set (N, *S), in float64."""
    y = np.asarray(train, np.float64).reshape(len(train), -1)
    if len(y) == 0:
        raise InputError("The Wiener filter needs at least one training example.")
    mu = y.mean(axis=0)
    d = y - mu
    return mu, d.T @ d / len(y)


def gaussian(mean: np.ndarray, cov: np.ndarray) -> Gaussian:
    mean = np.asarray(mean, np.float64).reshape(-1)
    cov = np.asarray(cov, np.float64)
    if cov.shape != (mean.size, mean.size):
        raise InputError(
            f"The covariance must be {mean.size} x {mean.size} (the mean's size); got {cov.shape}."
        )
    s, u = np.linalg.eigh(0.5 * (cov + cov.T))
    return Gaussian(mean, np.maximum(s, 0.0), u)


def wiener_from_moments(mean: np.ndarray, cov: np.ndarray):
    """D(x (B, *S), sigma (B,)) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu) for a given mean and
    covariance."""
    g = gaussian(mean, cov)

    def denoiser(x, sigma):
        dtype = x.dtype
        mu, s, u = (jnp.asarray(a, dtype) for a in g)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, dtype).reshape(-1), x.shape[:1])
        # coordinates in the eigenbasis
        z = (x.reshape(x.shape[0], -1) - mu) @ u
        shrink = s[None, :] / (s[None, :] + sigma[:, None] ** 2)
        return (mu + (z * shrink) @ u.T).reshape(x.shape)
    return denoiser


def wiener_denoiser(train: np.ndarray):
    """The Wiener filter of a training set (N, *S) (module docstring)."""
    return wiener_from_moments(*moments(train))


def wiener_gain(g: Gaussian, sigma: jax.Array, dtype=jnp.float32) -> jax.Array:
    """W_sigma = U diag(S / (S + sigma^2)) U^T for each sigma (B,): (B, D, D)."""
    s, u = jnp.asarray(g.eigvals, dtype), jnp.asarray(g.eigvecs, dtype)
    shrink = s[None, :] / (s[None, :] + jnp.asarray(sigma, dtype)[:, None] ** 2)
    return jnp.einsum("ij,bj,kj->bik", u, shrink, u)


def wiener_heatmap(train: np.ndarray):
    """heat(sigma (B,)) -> (B, P, P): |W_sigma| summed over channels (row: output pixel, column:
    input pixel) for images (N, H, W, C), P = H W; the training-free sensitivity map PSPC-flex can
    threshold."""
    train = np.asarray(train)
    if train.ndim != 4:
        raise InputError(f"Heatmaps need images (N, H, W, C); got shape {train.shape}.")
    _, h, w, c = train.shape
    g = gaussian(*moments(train))

    def heat(sigma):
        gain = jnp.abs(wiener_gain(g, sigma, jnp.asarray(sigma).dtype))
        return gain.reshape(-1, h * w, c, h * w, c).sum(axis=(2, 4))
    return heat
