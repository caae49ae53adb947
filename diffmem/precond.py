"""Preconditioning: wrap a raw network F into the common denoiser (Karras et al. 2022, eq. 7)

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),

with x = x0 + sigma n in EDM's unscaled view, x (B, *S), sigma (B,). One frozen dataclass per
preconditioning (EDM's Table 1), each with

    coefficients(sigma) -> Coefficients(c_skip, c_out, c_in, c_noise)   each shaped like sigma
    denoise(apply_fn, x, sigma) -> (B, *S)     apply_fn(x_in (B, *S), c_noise (B,)) -> F (B, *S)
    denoiser(apply_fn) -> D(x, sigma)          the same, as the library's Denoiser callable
    sample_sigma(key, shape=()) -> sigma       the training noise-level distribution
    loss_weight(sigma) -> lambda(sigma)        so that lambda |D - x0|^2 is the published training
                                               loss
    sigma_min, sigma_max                       the noise-level range samplers should cover

and the sigma <-> t maps its samplers and losses need:

    EDM   sigma_data 0.5: c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2),
          c_in = 1/sqrt(sigma^2+sd^2), c_noise = ln(sigma)/4; ln sigma ~ N(-1.2, 1.2^2),
          lambda = (sigma^2+sd^2)/(sigma sd)^2; sampled on [0.002, 80] (EDM trains on every
          sigma > 0).
    VP    beta_d 19.9, beta_min 0.1, M 1000, epsilon_t 1e-5:
          sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1);
          c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2+1), c_noise = (M-1) t(sigma);
          t ~ U(epsilon_t, 1), lambda = 1/sigma^2.
    VE    sigma_min 0.02, sigma_max 100: c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma/2);
          ln sigma ~ U(ln sigma_min, ln sigma_max), lambda = 1/sigma^2.
    DDPM  epsilon prediction on Ho et al.'s T = 1000 linear betas 1e-4..0.02,
          sigma_t = sqrt((1-ab_t)/ab_t):
          c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2+1), c_noise = the step t(sigma) (nearest
              grid
          step, as EDM's iDDPM wrapper, or fractional); t ~ U{0..T-1}, lambda = 1/sigma^2 (which
          makes lambda |D - x0|^2 = |eps_hat - eps|^2, Ho et al.'s simple loss). On the grid, c_in x
          is exactly the network's input x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps.

The loss weights are EDM's: multiply them by the per-example mean (or sum) of (D(x0 + sigma n,
sigma) - x0)^2.

`StepLabels(base)` keeps a preconditioning but feeds the network the DDPM step of sigma instead of
its c_noise, for networks whose noise embedding expects steps in [0, T-1] (the DDPM UNet) under EDM
or VE.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffmem.sde import Denoiser, _bcast, ddpm_alpha_bar

__all__ = ["RawNet", "Coefficients", "EDM", "VP", "VE", "DDPM", "StepLabels", "PRECONDITIONINGS",
           "make", "ddpm_sigmas", "ddpm_denoiser"]

RawNet = Callable[[jax.Array, jax.Array], jax.Array]  # F(x_in (B, *S), c_noise (B,)) -> (B, *S)


class Coefficients(NamedTuple):
    """EDM's preconditioning coefficients, each with the shape of sigma."""
    c_skip: jax.Array
    c_out: jax.Array
    c_in: jax.Array
    c_noise: jax.Array


def _per_example_sigma(sigma, x: jax.Array) -> jax.Array:
    """sigma as a (B,) float array: a scalar is broadcast over the batch; (B,) is checked against x
    (B, *S)."""
    if x.ndim < 1:
        raise ValueError(f"x must be batched, shape (B, *S); got shape {x.shape}.")
    sigma = jnp.asarray(sigma)
    if sigma.ndim == 0 or sigma.shape == (1,):
        sigma = jnp.broadcast_to(sigma.reshape(()), x.shape[:1])
    if sigma.shape != x.shape[:1]:
        raise ValueError(
            f"sigma must have shape (B,) = {x.shape[:1]} (or be a scalar); got {sigma.shape}."
        )
    return sigma.astype(jnp.result_type(sigma.dtype, x.dtype, jnp.float32))


class _Preconditioning:
    """Shared `denoise` / `denoiser` for any class with `coefficients(sigma)`."""

    def coefficients(self, sigma: jax.Array) -> Coefficients:  # pragma: no cover - overridden
        raise NotImplementedError

    def denoise(self, apply_fn: RawNet, x: jax.Array, sigma: jax.Array) -> jax.Array:
        """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise): x (B, *S), sigma (B,) or scalar -> (B,
        *S).

        apply_fn is the raw network as a batched callable F(x_in (B, *S), c_noise (B,)) -> (B, *S),
        e.g. `lambda x, c: model.apply(params, x, c)`; bind class labels in that closure.
        """
        sigma = _per_example_sigma(sigma, x)
        c = self.coefficients(sigma)
        f = apply_fn((_bcast(c.c_in, x) * x).astype(x.dtype), c.c_noise)
        return (_bcast(c.c_skip, x) * x + _bcast(c.c_out, x) * f).astype(x.dtype)

    def denoiser(self, apply_fn: RawNet) -> Denoiser:
        """`denoise` with the network bound: the library's D(x (B, *S), sigma (B,)) -> (B, *S)."""
        return functools.partial(self.denoise, apply_fn)


def _inverse_square_weight(sigma: jax.Array) -> jax.Array:
    return 1.0 / jnp.square(sigma)


@dataclasses.dataclass(frozen=True)
class EDM(_Preconditioning):
    """Karras et al.'s preconditioning and training distribution (EDM, Table 1, right column)."""
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    # the sampling range of EDM's samplers (training covers every sigma > 0)
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def coefficients(self, sigma: jax.Array) -> Coefficients:
        sd2 = self.sigma_data**2
        total = jnp.square(sigma) + sd2
        return Coefficients(c_skip=sd2 / total, c_out=sigma * self.sigma_data / jnp.sqrt(total),
                            c_in=1.0 / jnp.sqrt(total), c_noise=jnp.log(sigma) / 4)

    def sample_sigma(
        self, key: jax.Array, shape: tuple[int, ...] = (), dtype=jnp.float32
    ) -> jax.Array:
        """ln sigma ~ N(p_mean, p_std^2)."""
        return jnp.exp(self.p_mean + self.p_std * jax.random.normal(key, shape, dtype))

    def loss_weight(self, sigma: jax.Array) -> jax.Array:
        """(sigma^2 + sd^2) / (sigma sd)^2."""
        return (jnp.square(sigma) + self.sigma_data**2) / jnp.square(sigma * self.sigma_data)


@dataclasses.dataclass(frozen=True)
class VP(_Preconditioning):
    """Song et al.'s variance-preserving SDE as EDM preconditions it (VPPrecond / VPLoss)."""
    beta_d: float = 19.9
    beta_min: float = 0.1
    M: int = 1000
    epsilon_t: float = 1e-5

    def sigma(self, t: jax.Array) -> jax.Array:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        t = jnp.asarray(t)
        return jnp.sqrt(jnp.expm1(0.5 * self.beta_d * jnp.square(t) + self.beta_min * t))

    def t_of_sigma(self, sigma: jax.Array) -> jax.Array:
        """The inverse of `sigma`: (sqrt(beta_min^2 + 2 beta_d ln(1 + sigma^2)) - beta_min) /
        beta_d."""
        sigma = jnp.asarray(sigma)
        return (
            jnp.sqrt(self.beta_min**2 + 2 * self.beta_d * jnp.log1p(jnp.square(sigma)))
            - self.beta_min
        ) / self.beta_d

    @property
    def sigma_min(self) -> float:
        """sigma(epsilon_t), the smallest training noise level."""
        return float(
            np.sqrt(
                np.expm1(0.5 * self.beta_d * self.epsilon_t**2 + self.beta_min * self.epsilon_t)
            )
        )

    @property
    def sigma_max(self) -> float:
        """sigma(1)."""
        return float(np.sqrt(np.expm1(0.5 * self.beta_d + self.beta_min)))

    def coefficients(self, sigma: jax.Array) -> Coefficients:
        one = jnp.ones_like(sigma)
        return Coefficients(c_skip=one, c_out=-sigma, c_in=1.0 / jnp.sqrt(jnp.square(sigma) + 1),
                            c_noise=(self.M - 1) * self.t_of_sigma(sigma))

    def sample_sigma(
        self, key: jax.Array, shape: tuple[int, ...] = (), dtype=jnp.float32
    ) -> jax.Array:
        """sigma(t) with t ~ U(epsilon_t, 1) (EDM writes t = 1 + u (epsilon_t - 1), u ~ U(0, 1))."""
        u = jax.random.uniform(key, shape, dtype)
        return self.sigma(1 + u * (self.epsilon_t - 1))

    def loss_weight(self, sigma: jax.Array) -> jax.Array:
        """1 / sigma^2."""
        return _inverse_square_weight(sigma)


@dataclasses.dataclass(frozen=True)
class VE(_Preconditioning):
    """Song et al.'s variance-exploding SDE as EDM preconditions it (VEPrecond / VELoss)."""
    sigma_min: float = 0.02
    sigma_max: float = 100.0

    def coefficients(self, sigma: jax.Array) -> Coefficients:
        one = jnp.ones_like(sigma)
        return Coefficients(c_skip=one, c_out=sigma, c_in=one, c_noise=jnp.log(0.5 * sigma))

    def sample_sigma(
        self, key: jax.Array, shape: tuple[int, ...] = (), dtype=jnp.float32
    ) -> jax.Array:
        """sigma = sigma_min (sigma_max / sigma_min)^u, u ~ U(0, 1) (log-uniform)."""
        u = jax.random.uniform(key, shape, dtype)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** u

    def loss_weight(self, sigma: jax.Array) -> jax.Array:
        """1 / sigma^2."""
        return _inverse_square_weight(sigma)


@dataclasses.dataclass(frozen=True)
class DDPM(_Preconditioning):
    """Epsilon prediction on DDPM's discrete steps (Ho et al.; Pham et al.), as EDM's iDDPM-style
    wrapper.

    The raw network is eps_theta(x_t, t) with t in 0..num_steps-1 and x_t = sqrt(ab_t) x0 + sqrt(1 -
    ab_t) eps,
    ab_t = prod_{s <= t} (1 - beta_s). timestep: 'nearest' feeds the grid step whose sigma_t is
        nearest to
    sigma (EDM's round_sigma; samplers on the grid hit it exactly); 'continuous' feeds the
    fractional step interpolated linearly in ln sigma between grid steps (clamped to [0, T-1]).
    """
    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    timestep: str = "nearest"

    def __post_init__(self):
        if self.timestep not in ("nearest", "continuous"):
            raise ValueError(
                f"DDPM timestep must be 'nearest' or 'continuous'; got {self.timestep!r}."
            )
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(
                f"DDPM needs 0 < beta_start <= beta_end < 1; got {self.beta_start}, "
                f"{self.beta_end}."
            )

    def alpha_bar(self) -> np.ndarray:
        """ab_t, t = 0..T-1, float64 (T,)."""
        return ddpm_alpha_bar(self.num_steps, self.beta_start, self.beta_end)

    def sigmas(self) -> np.ndarray:
        """sigma_t = sqrt((1 - ab_t) / ab_t), increasing in t, float64 (T,)."""
        return ddpm_sigmas(self.alpha_bar())

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas()[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas()[-1])

    def sigma(self, t: jax.Array) -> jax.Array:
        """sigma_t of integer steps t (any shape)."""
        return jnp.asarray(self.sigmas(), jnp.float32)[jnp.asarray(t)]

    def t_of_sigma(self, sigma: jax.Array) -> jax.Array:
        """The step fed to the network for noise level sigma: int32 ('nearest') or float
        ('continuous')."""
        return _step_of_sigma(jnp.asarray(sigma), self.sigmas(), self.timestep)

    def coefficients(self, sigma: jax.Array) -> Coefficients:
        one = jnp.ones_like(sigma)
        return Coefficients(c_skip=one, c_out=-sigma, c_in=1.0 / jnp.sqrt(jnp.square(sigma) + 1),
                            c_noise=self.t_of_sigma(sigma).astype(sigma.dtype))

    def sample_step(self, key: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
        """t ~ U{0, ..., T-1}, int32."""
        return jax.random.randint(key, shape, 0, self.num_steps)

    def sample_sigma(
        self, key: jax.Array, shape: tuple[int, ...] = (), dtype=jnp.float32
    ) -> jax.Array:
        """sigma_t with t ~ U{0, ..., T-1} (the same draw as `sample_step` with the same key)."""
        return jnp.asarray(self.sigmas(), dtype)[self.sample_step(key, shape)]

    def loss_weight(self, sigma: jax.Array) -> jax.Array:
        """1 / sigma^2: lambda |D - x0|^2 = |eps_hat - eps|^2."""
        return _inverse_square_weight(sigma)


def _step_of_sigma(sigma: jax.Array, grid: np.ndarray, mode: str) -> jax.Array:
    """Map sigma (any shape) onto an increasing grid of sigmas (T,): nearest index or fractional
    index."""
    dtype = jnp.result_type(sigma.dtype, jnp.float32)
    g = jnp.asarray(grid, dtype)
    sigma = sigma.astype(dtype)
    if mode == "continuous":
        return jnp.interp(jnp.log(sigma), jnp.log(g), jnp.arange(g.shape[0], dtype=dtype))
    hi = jnp.clip(jnp.searchsorted(g, sigma), 1, g.shape[0] - 1)
    lo = hi - 1
    return jnp.where(jnp.abs(sigma - g[lo]) <= jnp.abs(g[hi] - sigma), lo, hi).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class StepLabels(_Preconditioning):
    """`base` with its noise label c_noise replaced by the DDPM step of sigma, t(sigma) in [0, T-1].

    The DDPM UNet embeds its noise label like a step index (sinusoids up to period 10,000), which
    suits DDPM (c_noise = the step) and VP (c_noise = (M-1) t, nearly the step) but not EDM's
    ln(sigma)/4 or VE's
    ln(sigma/2), a few units wide. Here the label is (T-1) t(sigma) with t(sigma) the inverse of the
    continuous VP schedule whose betas are the continuous limit of Ho et al.'s linear betas
    (beta_min = T beta_start, beta_d = T (beta_end - beta_start)), the label EDM's VP
    preconditioning feeds: on Ho et al.'s grid it is within 3.4 steps of the grid index (the two
    schedules differ at second order in beta), and it is smooth and increasing for every sigma > 0.
    Everything else (c_skip, c_out, c_in, the training noise levels and weights, the sampling range)
    is `base`'s.
    """
    base: EDM | VP | VE | DDPM
    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def step_of_sigma(self, sigma: jax.Array) -> jax.Array:
        """(T - 1) t(sigma), float, any shape."""
        vp = VP(beta_d=self.num_steps * (self.beta_end - self.beta_start),
                beta_min=self.num_steps * self.beta_start, M=self.num_steps)
        return (self.num_steps - 1) * vp.t_of_sigma(sigma)

    def coefficients(self, sigma: jax.Array) -> Coefficients:
        return self.base.coefficients(sigma)._replace(
            c_noise=self.step_of_sigma(sigma).astype(sigma.dtype)
        )

    def sample_sigma(
        self, key: jax.Array, shape: tuple[int, ...] = (), dtype=jnp.float32
    ) -> jax.Array:
        return self.base.sample_sigma(key, shape, dtype)

    def loss_weight(self, sigma: jax.Array) -> jax.Array:
        return self.base.loss_weight(sigma)

    @property
    def sigma_min(self) -> float:
        return self.base.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.base.sigma_max


PRECONDITIONINGS = {"edm": EDM, "vp": VP, "ve": VE, "ddpm": DDPM}


def make(name: str, **fields) -> EDM | VP | VE | DDPM:
    """Build a preconditioning by name ('edm', 'vp', 've', 'ddpm') with its fields as keyword
    arguments."""
    if name not in PRECONDITIONINGS:
        raise ValueError(
            f"Unknown preconditioning {name!r}; valid names: {sorted(PRECONDITIONINGS)}."
        )
    cls = PRECONDITIONINGS[name]
    valid = {f.name for f in dataclasses.fields(cls)}
    bad = set(fields) - valid
    if bad:
        raise ValueError(
            f"Preconditioning {name!r} has no field(s) {sorted(bad)}; valid fields: "
            f"{sorted(valid)}."
        )
    return cls(**fields)


# ------------------------------------------------------------ DDPM helpers on an explicit alpha_bar
def ddpm_sigmas(alpha_bar: np.ndarray) -> np.ndarray:
    """sigma_t = sqrt((1 - ab_t) / ab_t) of every DDPM step (increasing in t)."""
    alpha_bar = np.asarray(alpha_bar, np.float64)
    return np.sqrt((1 - alpha_bar) / alpha_bar)


def ddpm_denoiser(eps_fn: Callable[[jax.Array, jax.Array], jax.Array],
                  alpha_bar: np.ndarray | None = None, timestep: str = "nearest") -> Denoiser:
    """D(x, sigma) of an epsilon-prediction network eps_fn(x_t (B, *S), t (B,)) on any DDPM grid
    alpha_bar (T,) (default: Ho et al.'s linear betas). Same formulas as
    `DDPM(...).denoiser(eps_fn)`."""
    if timestep not in ("nearest", "continuous"):
        raise ValueError(f"timestep must be 'nearest' or 'continuous'; got {timestep!r}.")
    grid = ddpm_sigmas(ddpm_alpha_bar() if alpha_bar is None else alpha_bar)
    if np.any(np.diff(grid) <= 0):
        raise ValueError("alpha_bar must be strictly decreasing (sigma_t increasing in t).")

    def denoiser(x, sigma):
        sigma = _per_example_sigma(sigma, x)
        t = _step_of_sigma(sigma, grid, timestep)
        eps = eps_fn((x / _bcast(jnp.sqrt(jnp.square(sigma) + 1), x)).astype(x.dtype), t)
        return (x - _bcast(sigma, x) * eps).astype(x.dtype)

    return denoiser
