"""Noise processes as frozen dataclasses.

Every process is written in EDM's factorisation x_t = s(t) (x_0 + sigma(t) n), n ~ N(0, I):
`mean_scale(t)` is s(t), `sigma(t)` the noise-to-signal level and `marginal_std(t) = s(t) sigma(t)`.
A denoiser D(x, sigma) works on the unscaled x / s(t); `score_from_denoiser` / `denoiser_from_score`
convert between the two views, so samplers and likelihoods accept either.

All time arguments are arrays of shape (B,) (or scalars); data arrays are (B, *S).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Denoiser", "ScoreFn", "SDE", "VESDE", "GeometricVESDE", "VPSDE", "score_from_denoiser",
           "per_sample", "denoiser_from_score", "edm_sigma_steps", "ddpm_alpha_bar", "SDES",
           "make_sde"]

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]  # D(x (B,*S), sigma (B,)) -> (B,*S)
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]  # s(x (B,*S), t (B,)) -> (B,*S)


def per_sample(v, x: jax.Array) -> jax.Array:
    """A noise level or time given as a scalar, (1,) or (B,), as the (B,) array of one value per
    example of x (B, *S), in x's dtype: what every denoiser, score and sampler here takes."""
    return jnp.broadcast_to(jnp.asarray(v, x.dtype).reshape(-1), x.shape[:1])


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape a per-example (B,) array so it broadcasts against x (B, *S)."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


class SDE(Protocol):
    t_min: float
    t_max: float

    def mean_scale(self, t): ...
    def sigma(self, t): ...
    def t_of_sigma(self, sigma): ...
    def marginal_std(self, t): ...
    def drift(self, x, t): ...
    def diffusion(self, t): ...
    def prior_std(self) -> float: ...


class _PriorMixin:
    """Gaussian prior N(0, prior_std^2 I) at t_max, shared by all processes."""

    def prior_sample(self, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        """Draw (B, *S) = `shape` samples from the prior."""
        return jax.random.normal(key, shape, dtype) * self.prior_std()

    def prior_logp(self, z: jax.Array) -> jax.Array:
        """Log-density of the prior, per example: z (B, *S) -> (B,)."""
        d = math.prod(z.shape[1:])
        var = self.prior_std() ** 2
        sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=-1)
        return -0.5 * d * jnp.log(2 * jnp.pi * var) - 0.5 * sq / var

    def marginal_std(self, t):
        return self.mean_scale(t) * self.sigma(t)


@dataclasses.dataclass(frozen=True)
class VESDE(_PriorMixin):
    """The tutorial's variance-exploding SDE dx = sigma_max dw, marginal std sigma_max sqrt(t), t in
    [t_min, 1]."""
    sigma_max: float = 1.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def mean_scale(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def sigma(self, t):
        return self.sigma_max * jnp.sqrt(t)

    def t_of_sigma(self, sigma):
        return (jnp.asarray(sigma) / self.sigma_max) ** 2

    def drift(self, x, t):
        return jnp.zeros_like(x)

    def diffusion(self, t):
        return self.sigma_max * jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def prior_std(self) -> float:
        return self.sigma_max * math.sqrt(self.t_max)


@dataclasses.dataclass(frozen=True)
class GeometricVESDE(_PriorMixin):
    """Song et al.'s VE SDE: sigma(t) = sigma_min (sigma_max / sigma_min)^t, g(t) = sigma(t) sqrt(2
    log(smax/smin)).

    As in Song et al., the marginal std is taken as sigma(t) (the sigma_min^2 offset is neglected).
    """
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def mean_scale(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** jnp.asarray(t)

    def t_of_sigma(self, sigma):
        return jnp.log(jnp.asarray(sigma) / self.sigma_min) / math.log(
            self.sigma_max / self.sigma_min
        )

    def drift(self, x, t):
        return jnp.zeros_like(x)

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def prior_std(self) -> float:
        return self.sigma_max


@dataclasses.dataclass(frozen=True)
class VPSDE(_PriorMixin):
    """Continuous variance-preserving SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw, beta linear in
    t.

    s(t) = exp(-1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min), marginal std sqrt(1 - s^2).
    EDM's VP has beta_d = beta_max - beta_min = 19.9, beta_min = 0.1.
    """
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def beta(self, t):
        return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)

    def _log_mean_scale(self, t):
        t = jnp.asarray(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def mean_scale(self, t):
        return jnp.exp(self._log_mean_scale(t))

    def sigma(self, t):
        return jnp.sqrt(jnp.expm1(-2 * self._log_mean_scale(t)))

    def t_of_sigma(self, sigma):
        # Solve 1/2 beta_d t^2 + beta_min t = log(1 + sigma^2) for t >= 0.
        bd = self.beta_max - self.beta_min
        c = jnp.log1p(jnp.asarray(sigma) ** 2)
        return (jnp.sqrt(self.beta_min**2 + 2 * bd * c) - self.beta_min) / bd

    def marginal_std(self, t):
        return jnp.sqrt(-jnp.expm1(2 * self._log_mean_scale(t)))

    def drift(self, x, t):
        return -0.5 * _bcast(self.beta(t), x) * x

    def diffusion(self, t):
        return jnp.sqrt(self.beta(t))

    def prior_std(self) -> float:
        return 1.0


def score_from_denoiser(denoiser: Denoiser, sde: SDE | None = None) -> ScoreFn:
    """Score of p_t from a denoiser: grad log p_t(x) = (s D(x / s, sigma) - x) / (s sigma)^2.

    With sde None the time is sigma itself (EDM's view, s = 1): the score of the data noised at
    sigma, s(x (B, *S), sigma (B,) or broadcastable) = (D(x, sigma) - x) / sigma^2
    (`diffmem.model.Model.score`).
    This is diffmem's one denoiser -> score conversion."""
    if sde is None:
        def sigma_score(x, sigma):
            sigma = per_sample(sigma, x)
            return (denoiser(x, sigma) - x) / _bcast(sigma, x) ** 2

        return sigma_score

    def score_fn(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        s, sig = sde.mean_scale(t), sde.sigma(t)
        x0 = denoiser(x / _bcast(s, x), sig)
        return (_bcast(s, x) * x0 - x) / _bcast((s * sig) ** 2, x)

    return score_fn


def denoiser_from_score(score_fn: ScoreFn, sde: SDE) -> Denoiser:
    """Denoiser from a score (Tweedie): D(x, sigma) = x + s sigma^2 grad log p_t(s x), t =
    t(sigma)."""

    def denoiser(x, sigma):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
        t = sde.t_of_sigma(sigma)
        s = sde.mean_scale(t)
        return x + _bcast(s * sigma**2, x) * score_fn(_bcast(s, x) * x, t)

    return denoiser


def edm_sigma_steps(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                    rho: float = 7.0) -> np.ndarray:
    """EDM's time discretisation (Karras et al. 2022, eq. 5), sigma_0 = sigma_max > ... >
    sigma_{N-1} = sigma_min, with a final 0 appended: shape (num_steps + 1,)."""
    i = np.arange(num_steps, dtype=np.float64)
    inv = 1.0 / rho
    steps = (sigma_max**inv + i / max(num_steps - 1, 1) * (sigma_min**inv - sigma_max**inv)) ** rho
    return np.concatenate([steps, [0.0]])


def ddpm_alpha_bar(
    num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """Cumulative products alpha_bar_t, t = 1..T, of DDPM's linear beta schedule, float64 (T,)."""
    betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


SDES = {"ve": VESDE, "ve_geometric": GeometricVESDE, "vp": VPSDE}


def make_sde(name: str, **kwargs) -> SDE:
    """Build a noise process by name ('ve', 've_geometric', 'vp') with its fields as keyword
    arguments."""
    if name not in SDES:
        raise ValueError(f"Unknown SDE {name!r}; valid names: {sorted(SDES)}.")
    fields = {f.name for f in dataclasses.fields(SDES[name])}
    bad = set(kwargs) - fields
    if bad:
        raise ValueError(
            f"SDE {name!r} has no field(s) {sorted(bad)}; valid fields: {sorted(fields)}."
        )
    return SDES[name](**kwargs)
