"""Mixture of low-rank Gaussians (MoLRG; Wang et al. 2024,
`huijieZH/...:edm/training/dataset.py::MoLRG`).

Data: an orthonormal basis U (n x n, the left singular vectors of a seeded standard-normal matrix);
class k spans the columns [d k, d (k+1)), U_k (n, d); a sample of class k is x0 = U_k a, a ~ N(0,
Lambda_k) (Lambda_k = I upstream). Images are (res, res, 3) with n = 3 res^2 (upstream's flattening
differs by a fixed permutation, harmless). Values are not clipped: coordinates are about N(0, d /
n).

The population optimal denoiser (notes B.3): for x_t = alpha x0 + s eps,

    E[x0 | x_t] = sum_k w_k(x_t) U_k diag(alpha lam_kj / (alpha^2 lam_kj + s^2)) U_k^T x_t
    log w_k = log pi_k - 1/2 sum_j log(alpha^2 lam_kj + s^2) + sum_j alpha^2 lam_kj (u_kj^T x_t)^2
              / (2 s^2 (alpha^2 lam_kj + s^2)) + const,          w = softmax_k

VE is alpha = 1, s = sigma; VP is alpha = sqrt(abar), s = sqrt(1 - abar). `MoLRG.denoiser` is the
EDM view D(x, sigma) (VE), `MoLRG.posterior_mean(x_t, alpha, s)` the general one, `MoLRG.jacobian`
its analytic Jacobian. The optimal denoiser of the *empirical* MoLRG (N training points) is
`energy.empirical_denoiser`.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffmem.errors import InputError

__all__ = ["orthonormal_basis", "MoLRG", "principal_angles", "subspace_recovery",
           "memorization_ratio"]


def orthonormal_basis(n: int, seed: int) -> np.ndarray:
    """U (n, n): left singular vectors of an n x n standard-normal matrix drawn from numpy's
    PCG64(seed)."""
    g = np.random.default_rng(seed).standard_normal((n, n))
    return np.linalg.svd(g)[0]


@dataclasses.dataclass(frozen=True)
class MoLRG:
    """K classes of rank-d Gaussians in R^n on orthogonal subspaces.

    bases: (K, n, d) orthonormal columns, mutually orthogonal across classes; lambdas: (K, d)
    variances along each basis vector (ones upstream); weights: (K,) class probabilities (uniform
    upstream).
    """
    bases: np.ndarray
    lambdas: np.ndarray
    weights: np.ndarray

    @classmethod
    def make(
        cls, n: int, num_classes: int, dim: int, seed: int = 0, lambdas=None, weights=None
    ) -> "MoLRG":
        """Class k spans columns [dim k, dim (k+1)) of `orthonormal_basis(n, seed)`."""
        if num_classes * dim > n:
            raise InputError(
                f"MoLRG needs num_classes * dim <= n; got {num_classes} * {dim} > {n}."
            )
        if num_classes < 1 or dim < 1:
            raise InputError(f"num_classes and dim must be >= 1; got {num_classes}, {dim}.")
        u = orthonormal_basis(n, seed)[:, :num_classes * dim]
        bases = u.reshape(n, num_classes, dim).transpose(1, 0, 2)
        lam = np.ones((num_classes, dim)) if lambdas is None else np.broadcast_to(
            np.asarray(lambdas, np.float64), (num_classes, dim)).copy()
        w = (
            np.full(num_classes, 1.0 / num_classes)
            if weights is None
            else np.asarray(weights, np.float64)
        )
        if (
            np.any(lam <= 0)
            or w.shape != (num_classes,)
            or np.any(w <= 0)
            or abs(w.sum() - 1) > 1e-9
        ):
            raise InputError("lambdas must be positive (K, d); weights positive (K,) summing to 1.")
        return cls(bases, lam, w)

    @property
    def n(self) -> int:
        return self.bases.shape[1]

    @property
    def num_classes(self) -> int:
        return self.bases.shape[0]

    @property
    def dim(self) -> int:
        return self.bases.shape[2]

    def sample(self, per_class: int, seed: int = 0, shape: tuple[int, ...] | None = None):
        """`per_class` samples of each class, in class order: (x (K per_class, *shape) float32,
        labels (K per_class,)).

        a ~ N(0, Lambda_k) from numpy's PCG64(seed); shape defaults to (n,) (use (res, res, 3) for
        images).
        """
        rng = np.random.default_rng(seed)
        a = (
            rng.standard_normal((self.num_classes, per_class, self.dim))
            * np.sqrt(self.lambdas)[:, None, :]
        )
        x = np.einsum("knd,kpd->kpn", self.bases, a).reshape(-1, self.n)
        labels = np.repeat(np.arange(self.num_classes), per_class)
        shape = (self.n,) if shape is None else tuple(shape)
        if math.prod(shape) != self.n:
            raise InputError(f"shape {shape} does not hold n = {self.n} values.")
        return x.reshape((-1,) + shape).astype(np.float32), labels

    # ------------------------------------------------------------------------------ posterior mean
    def _terms(self, xf, alpha, s):
        """Per-class coefficients for flat x (B, n): projections p (B, K, d), log weights (B, K), c
        (B, K, d)."""
        dt = xf.dtype
        u, lam = jnp.asarray(self.bases, dt), jnp.asarray(self.lambdas, dt)
        a2l = alpha[:, None, None] ** 2 * lam[None]                                    # (B, K, d)
        var = a2l + s[:, None, None] ** 2
        p = jnp.einsum("bn,knd->bkd", xf, u)
        logw = (jnp.log(jnp.asarray(self.weights, dt))[None] - 0.5 * jnp.sum(jnp.log(var), -1)
                + jnp.sum(a2l * p**2 / (2 * s[:, None, None] ** 2 * var), -1))
        c = alpha[:, None, None] * lam[None] / var
        # grad g_k = 2 U_k h U_k^T x
        h = a2l / (2 * s[:, None, None] ** 2 * var)
        return u, p, jax.nn.softmax(logw, axis=-1), c, h

    def posterior_mean(self, x_t, alpha, s):
        """E[x0 | x_t] for x_t = alpha x0 + s eps; x_t (B, *S), alpha and s scalars or (B,)."""
        x_t = jnp.asarray(x_t)
        xf = x_t.reshape(x_t.shape[0], -1)
        alpha = jnp.broadcast_to(jnp.asarray(alpha, xf.dtype), xf.shape[:1])
        s = jnp.broadcast_to(jnp.asarray(s, xf.dtype), xf.shape[:1])
        u, p, w, c, _ = self._terms(xf, alpha, s)
        out = jnp.einsum("knd,bkd->bn", u, w[..., None] * c * p)
        return out.reshape(x_t.shape)

    def denoiser(self, x, sigma):
        """The EDM (VE) view D(x, sigma) = E[x0 | x0 + sigma eps]: x (B, *S), sigma (B,)."""
        return self.posterior_mean(x, 1.0, sigma)

    def vp_denoiser(self, x_t, alpha_bar):
        """E[x0 | sqrt(abar) x0 + sqrt(1 - abar) eps] at a VP state x_t (B, *S); alpha_bar scalar or
        (B,)."""
        ab = jnp.asarray(alpha_bar)
        return self.posterior_mean(x_t, jnp.sqrt(ab), jnp.sqrt(1 - ab))

    def jacobian(self, x_t, alpha, s):
        """Analytic dE[x0 | x_t]/dx_t for one state x_t (*S): (n, n).

        J = sum_k w_k M_k + sum_k (M_k x)(grad w_k)^T, M_k = U_k diag(c_k) U_k^T,
        grad w_k = w_k (grad g_k - sum_l w_l grad g_l), grad g_k = 2 U_k diag(h_k) U_k^T x.
        """
        xf = jnp.asarray(x_t).reshape(1, -1)
        alpha = jnp.full((1,), alpha, xf.dtype)
        s = jnp.full((1,), s, xf.dtype)
        u, p, w, c, h = self._terms(xf, alpha, s)
        p, w, c, h = p[0], w[0], c[0], h[0]
        m = jnp.einsum("knd,kd,kmd->knm", u, c, u)                                    # (K, n, n)
        mx = jnp.einsum("knd,kd->kn", u, c * p)                                       # M_k x
        grad_g = 2 * jnp.einsum("knd,kd->kn", u, h * p)
        grad_w = w[:, None] * (grad_g - jnp.sum(w[:, None] * grad_g, 0)[None])
        return jnp.einsum("k,knm->nm", w, m) + jnp.einsum("kn,km->nm", mx, grad_w)

    # ------------------------------------------------------------------------------ metrics
    def subspace_error(self, x) -> np.ndarray:
        """min_k ||x - P_k x|| / ||x|| per row of x (B, *S): 0 on the union of the class
        subspaces."""
        xf = np.asarray(x, np.float64).reshape(len(x), -1)
        p = np.einsum("bn,knd->bkd", xf, self.bases)
        resid2 = np.sum(xf**2, -1)[:, None] - np.sum(p**2, -1)
        return np.sqrt(np.maximum(resid2.min(-1), 0)) / np.maximum(
            np.linalg.norm(xf, axis=-1), 1e-30
        )

    def nearest_class(self, x) -> np.ndarray:
        """Index of the subspace holding the most of each row's energy, (B,)."""
        xf = np.asarray(x, np.float64).reshape(len(x), -1)
        return np.argmax(np.sum(np.einsum("bn,knd->bkd", xf, self.bases) ** 2, -1), -1)


def principal_angles(a, b) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spans of a (n, p) and b (n, q)."""
    qa, _ = np.linalg.qr(np.asarray(a, np.float64))
    qb, _ = np.linalg.qr(np.asarray(b, np.float64))
    cos = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), -1.0, 1.0)
    return np.arccos(cos)


def subspace_recovery(jac, basis) -> float:
    """Largest principal angle (radians) between the top-d right singular vectors of a Jacobian (n,
    n) and a class basis (n, d): 0 when the denoiser's local projection is exactly that class's
    subspace."""
    v = np.linalg.svd(np.asarray(jac, np.float64))[2]
    return float(principal_angles(v[: basis.shape[1]].T, basis).max())


def memorization_ratio(samples, train) -> float | None:
    """Gu et al.'s ratio (d1 / d2 < 1/3 to the training set) of samples (B, *S) to training points
    (N, *S), by exact L2 (`metrics.memorization.ratio_of`); None for N < 2."""
    from diffmem.metrics.memorization import ratio_of
    return ratio_of(np.asarray(samples, np.float64), np.asarray(train, np.float64))
