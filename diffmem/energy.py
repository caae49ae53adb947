"""Dense Associative Memory and diffusion energies, the empirical optimal denoiser, the circle's
closed form, attractors of the empirical denoiser, and relative energies along a path.

Notation (DESIGN.md section 3): patterns y_i, i = 1..N (rows of `patterns`, any shape (N, *S)); x a
query.
  E_AM(x; beta)          = -(1/beta) log sum_i exp(-beta ||x - y_i||^2)
  E_DM(x, t; sigma)      = -2 sigma^2 t log sum_i exp(-||x - y_i||^2 / (2 sigma^2 t))
                           (beta_t = 1/(2 sigma^2 t))
  D(x; s)                = sum_i softmax_i(-||x - y_i||^2 / (2 s^2)) y_i
                           (the empirical optimal denoiser)
All are computed as GEMMs over chunks of patterns with a running log-sum-exp (memory bounded by
`chunk` rows of patterns, default DEFAULT_CHUNK, never an N x B matrix), exact in float64 when x64
is enabled. Every value is absolute: nothing subtracts a minimum over the batch (energies relative
to a reference are formed explicitly by the caller, e.g. `relative_energy`).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from diffmem.errors import InputError
from diffmem.metrics import neighbours
from diffmem.sde import Denoiser, ScoreFn, per_sample

__all__ = ["DEFAULT_CHUNK", "log_sum_exp_sq", "dense_am_energy", "diffusion_energy",
           "empirical_denoiser", "empirical_score", "circle_energy", "circle_score",
           "circle_energy_numpy", "find_attractors", "relative_energy", "ddpm_grad_energy"]


# ----------------------------------------------------------------------------- streamed log-sum-exp
# patterns per GEMM when `chunk` is None: B x 1024 logits and 1024 patterns in memory
DEFAULT_CHUNK = 1024


def _chunked(patterns: jax.Array, chunk: int | None):
    """Patterns as (C, chunk, D) with a validity mask (C, chunk); N padded up to a multiple of chunk
    (chunk None: DEFAULT_CHUNK)."""
    n = patterns.shape[0]
    flat = jnp.reshape(patterns, (n, -1))
    chunk = max(1, min(DEFAULT_CHUNK if chunk is None else int(chunk), n))
    num = -(-n // chunk)
    pad = num * chunk - n
    flat = jnp.pad(flat, ((0, pad), (0, 0)))
    valid = jnp.arange(num * chunk) < n
    return flat.reshape(num, chunk, -1), valid.reshape(num, chunk)


def _stream(
    x: jax.Array, inv_var: jax.Array, patterns: jax.Array, chunk: int | None, with_mean: bool
):
    """For each row x_b and precision inv_var_b: lse_b = log sum_i exp(-||x_b - y_i||^2 inv_var_b /
    2) and, if with_mean, the softmax-weighted mean of the y_i. x: (B, D), inv_var: (B,)."""
    ys, valid = _chunked(patterns, chunk)
    dtype = x.dtype
    b = x.shape[0]

    def body(carry, inp):
        m, s, acc = carry
        y, ok = inp
        y = y.astype(dtype)
        # -||x - y||^2 / (2 v) = (x.y - |y|^2 / 2) / v - |x|^2 / (2 v); the |x|^2 term is added at
        # the end.
        logits = (x @ y.T - 0.5 * jnp.sum(y * y, axis=-1)[None, :]) * inv_var[:, None]
        logits = jnp.where(ok[None, :], logits, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        scale = jnp.where(jnp.isfinite(m), jnp.exp(m - m_new), 0.0)
        p = jnp.exp(logits - m_new[:, None])
        s = s * scale + jnp.sum(p, axis=-1)
        if with_mean:
            acc = acc * scale[:, None] + p @ y
        return (m_new, s, acc), None

    init = (jnp.full((b,), -jnp.inf, dtype), jnp.zeros((b,), dtype),
            jnp.zeros((b, ys.shape[-1]) if with_mean else (b, 0), dtype))
    (m, s, acc), _ = jax.lax.scan(body, init, (ys, valid))
    lse = m + jnp.log(s) - 0.5 * jnp.sum(x * x, axis=-1) * inv_var
    return lse, (acc / s[:, None] if with_mean else None)


def log_sum_exp_sq(
    x: jax.Array, patterns: jax.Array, inv_var, chunk: int | None = None
) -> jax.Array:
    """log sum_i exp(-||x_b - y_i||^2 * inv_var / 2) for x (B, *S) or one example (*S),
    patterns (N, *S); inv_var scalar or (B,). Returns (B,), or a scalar for one example."""
    x, single = _as_batch(x, patterns, "log_sum_exp_sq")
    xb = jnp.reshape(x, (x.shape[0], -1))
    inv = per_sample(inv_var, xb)
    out = _stream(xb, inv, patterns, chunk, with_mean=False)[0]
    return out[0] if single else out


def _as_batch(x, patterns, what: str) -> tuple[jax.Array, bool]:
    """x as a batch (B, *S) of the patterns' example shape S, and whether it was one (*S)."""
    x = jnp.asarray(x)
    shape = tuple(jnp.shape(patterns)[1:])
    if x.shape == shape:
        return x[None], True
    if x.ndim >= 1 and math.prod(x.shape[1:]) == math.prod(shape):  # (B, *S), or (B, prod(S))
        return x, False
    raise InputError(f"{what}: x must be one example of shape {shape} (the patterns' rows) or a "
                     f"batch (B, {', '.join(map(str, shape))}); got shape {x.shape}.")


# ------------------------------------------------------------------------------------- the energies
def dense_am_energy(
    x: jax.Array, patterns: jax.Array, beta: float, chunk: int | None = None
) -> jax.Array:
    """E_AM(x) = -(1/beta) log sum_i exp(-beta ||x - y_i||^2), x (B, *S) -> (B,)
    (one example (*S) -> ())."""
    return -log_sum_exp_sq(x, patterns, 2.0 * beta, chunk) / beta


def diffusion_energy(
    x: jax.Array, t, patterns: jax.Array, sigma: float = 1.0, chunk: int | None = None
) -> jax.Array:
    """E_DM(x, t) = -2 sigma^2 t log sum_i exp(-||x - y_i||^2 / (2 sigma^2 t)), x (B, *S),
    t scalar or (B,) (one example (*S) with a scalar t -> ())."""
    x = jnp.asarray(x)
    v = 2.0 * sigma**2 * jnp.asarray(t, x.dtype)
    return -v * log_sum_exp_sq(x, patterns, 2.0 / v, chunk)


def empirical_denoiser(patterns: jax.Array, chunk: int | None = None) -> Denoiser:
    """The optimal denoiser of the empirical distribution of `patterns` (N, *S), as a batched D(x,
    sigma).

    D(x; s) = sum_i softmax_i(-||x - y_i||^2 / (2 s^2)) y_i, streamed over chunks of `chunk`
        patterns.
    It plugs into every sampler, likelihood and energy as a trained network would ("the theoretical
    optimum"). x is a batch (B, *S) with sigma scalar or (B,), or one example (*S) with a scalar
    sigma (-> (*S)).
    """
    def denoiser(x, sigma):
        x, single = _as_batch(x, patterns, "empirical_denoiser")
        xb = jnp.reshape(x, (x.shape[0], -1))
        sigma = per_sample(sigma, xb)
        _, mean = _stream(xb, 1.0 / sigma**2, patterns, chunk, with_mean=True)
        mean = mean.reshape(x.shape)
        return mean[0] if single else mean
    return denoiser


def empirical_score(patterns: jax.Array, sigma_of_t: Callable, chunk: int | None = None) -> ScoreFn:
    """Score of the noised empirical distribution under a VE process with std sigma_of_t(t):
    s(x, t) = (D(x; sigma(t)) - x) / sigma(t)^2 = grad_x E_DM-type log-density.
    x (B, *S) with t scalar or (B,), or one example (*S) with a scalar t."""
    d = empirical_denoiser(patterns, chunk)

    def score_fn(x, t):
        x, single = _as_batch(x, patterns, "empirical_score")
        s = per_sample(sigma_of_t(t), x)
        out = (d(x, s) - x) / s.reshape((-1,) + (1,) * (x.ndim - 1)) ** 2
        return out[0] if single else out
    return score_fn


# --------------------------------------------------------------------------------------- the circle
def circle_energy(x: np.ndarray | jax.Array, beta: float) -> jax.Array:
    """K -> infinity limit on the unit circle: E(R) = R^2 + 1 - (1/beta) log I0(2 beta R),
    x (B, 2) -> (B,) (one point (2,) -> ()).

    log I0(z) = log i0e(z) + z (exponentially scaled Bessel function) so beta up to 1e4 does not
    overflow.
    """
    x = jnp.asarray(x)
    r = jnp.sqrt(jnp.sum(x * x, axis=-1) + jnp.finfo(x.dtype).tiny)  # differentiable at the origin
    z = 2.0 * beta * r
    return r**2 + 1.0 - (jnp.log(jax.scipy.special.i0e(z)) + z) / beta


def circle_score(x: np.ndarray | jax.Array, beta: float, eps: float = 1e-9) -> jax.Array:
    """-grad E / 1 along the radius: 2 (I1(2 beta R) / I0(2 beta R) - R) x / R, x (B, 2) -> (B, 2)
    (one point (2,) -> (2,))."""
    x = jnp.asarray(x)
    # smooth at the origin (jvp of a norm at 0 is NaN)
    r = jnp.sqrt(jnp.sum(x * x, axis=-1) + eps**2)
    z = 2.0 * beta * r
    radial = 2.0 * (jax.scipy.special.i1e(z) / jax.scipy.special.i0e(z) - r)
    return (radial / r)[..., None] * x


def circle_energy_numpy(r: np.ndarray, beta: float) -> np.ndarray:
    """Float64 SciPy twin of `circle_energy` as a function of the radius (for reports and tests)."""
    z = 2.0 * beta * np.asarray(r, np.float64)
    return r**2 + 1.0 - (np.log(scipy.special.i0e(z)) + z) / beta


# --------------------------------------------------------------------------------------- attractors
def find_attractors(patterns: jax.Array, sigma: float, starts: jax.Array, *, max_iter: int = 500,
                    tol: float = 1e-6, merge_tol: float = 1e-3, stored_tol: float | None = None,
                    chunk: int | None = None) -> dict:
    """Fixed points of the modern Hopfield update x <- D(x; sigma) reached from `starts` (M, *S).

    Iterates until ||x_new - x|| < tol (or max_iter), merges fixed points closer than merge_tol, and
    labels each as "stored" (within stored_tol of a pattern; default merge_tol * 10) or "spurious".
    Returns {"points" (F, *S), "counts" (F,) basin sizes, "kind" (F,) str, "energy" (F,) E_DM at
    sigma^2 t = sigma^2, "nearest_pattern_distance" (F,), "converged" (M,) bool}.
    """
    d = empirical_denoiser(patterns, chunk)
    sig = jnp.full(starts.shape[:1], sigma, starts.dtype)

    def cond(c):
        i, _, delta = c
        return (i < max_iter) & (delta > tol)

    def body(c):
        i, x, _ = c
        x_new = d(x, sig)
        delta = jnp.max(jnp.linalg.norm(jnp.reshape(x_new - x, (x.shape[0], -1)), axis=-1))
        return i + 1, x_new, delta

    @jax.jit
    def iterate(x):
        _, x, _ = jax.lax.while_loop(cond, body, (0, x, jnp.asarray(jnp.inf, x.dtype)))
        step = jnp.linalg.norm(jnp.reshape(d(x, sig) - x, (x.shape[0], -1)), axis=-1)
        return x, step

    final, last_step = iterate(starts)
    final, last_step = np.asarray(final), np.asarray(last_step)
    flat = final.reshape(len(final), -1)
    reps, counts = [], []
    for row in flat:  # greedy merge: attractors are few
        for j, r in enumerate(reps):
            if np.linalg.norm(row - r) < merge_tol:
                counts[j] += 1
                break
        else:
            reps.append(row.copy())
            counts.append(1)
    points = np.stack(reps).reshape((len(reps),) + final.shape[1:])
    pats = np.asarray(patterns).reshape(len(patterns), -1)
    nearest = neighbours.nearest(np.stack(reps), pats).distances[:, 0]
    stored_tol = merge_tol * 10 if stored_tol is None else stored_tol
    kind = np.where(nearest < stored_tol, "stored", "spurious")
    energy = np.asarray(diffusion_energy(jnp.asarray(points), 1.0, patterns, sigma, chunk))
    order = np.argsort(-np.asarray(counts), kind="stable")
    return {"points": points[order], "counts": np.asarray(counts)[order], "kind": kind[order],
            "energy": energy[order], "nearest_pattern_distance": nearest[order],
            "converged": last_step < max(tol * 10, 1e-5)}


# ---------------------------------------------------------------------------------- relative energy
def relative_energy(grad_energy: Callable[[jax.Array], jax.Array], x: jax.Array, r: jax.Array,
                    num: int = 20) -> jax.Array:
    """Energy along the path x(a) = cos(a) x + sin(a) r, a in [0, pi/2], relative to x (Pham et
    al.).

    E(a) - E(0) = integral_0^a grad_E(x(a')) . x'(a') da' by the trapezoid rule on `num` points.
    grad_energy: batched (B, *S) -> (B, *S); for a score model use `lambda x: -score(x)` (E = -log
    p), for Pham et al.'s DDPM variant the force -beta_0 s(x) - beta_0 x / 2 (`ddpm_grad_energy`).
    x, r: (B, *S) start points and directions. Returns (B, num) energies, first column 0.
    """
    a = jnp.linspace(0.0, math.pi / 2, num, dtype=x.dtype)
    path = jnp.cos(a)[:, None, None] * x.reshape(1, x.shape[0], -1) + jnp.sin(a)[
        :, None, None
    ] * r.reshape(1, r.shape[0], -1)
    tangent = -jnp.sin(a)[:, None, None] * x.reshape(1, x.shape[0], -1) + jnp.cos(a)[
        :, None, None
    ] * r.reshape(1, r.shape[0], -1)
    g = jax.vmap(lambda p: grad_energy(p.reshape(x.shape)).reshape(x.shape[0], -1))(path)
    integrand = jnp.sum(g * tangent, axis=-1)  # (num, B)
    da = a[1] - a[0]
    steps = 0.5 * (integrand[1:] + integrand[:-1]) * da
    return jnp.concatenate([jnp.zeros((1, x.shape[0]), x.dtype), jnp.cumsum(steps, axis=0)]).T


def ddpm_grad_energy(
    score_fn: Callable[[jax.Array], jax.Array], beta_0: float
) -> Callable[[jax.Array], jax.Array]:
    """Pham et al.'s force at the smallest DDPM noise level: -beta_0 s(x) - beta_0 x / 2 (DESIGN.md
    section 3), where s is the score at step 0 (std_0 = sqrt(1 - alpha_bar_0), not cumprod of all
    betas)."""
    return lambda x: -beta_0 * score_fn(x) - 0.5 * beta_0 * x
