"""Speciation and collapse times from the training data alone (Biroli, Bonnaire, de Bortoli & Mezard
2024).

Forward process in OU time: x_t = e^{-t} a + sqrt(Delta_t) z, Delta_t = 1 - e^{-2t}; the DDPM grid
(1000 linear betas) maps to it by t = -1/2 log alpha_bar (their Eq. 59).

Speciation: t_S = 1/2 log Lambda, Lambda the largest eigenvalue of the (mean-centred) data
covariance; in DDPM index, the first (0-based) step with alpha_bar < 1 / Lambda (MNIST Lambda = 7.66
-> 446).

Collapse: with n training points in dimension N, alpha = log n / N and P^e_t = (1/n) sum_mu N(e^{-t}
a_mu, Delta_t I),

    f^e(t) = (1/N) E_{x ~ P^e_t}[log P^e_t(x)] + 1/2 (1 + log(2 pi Delta_t)) + alpha
           = 1/2 + (1/N) E_x[ log sum_mu exp(-||x - e^{-t} a_mu||^2 / (2 Delta_t)) ]

(the normalisations cancel). f^e / alpha -> 1 at large t and -> 0 in the collapsed phase, where
P^e_t is n separate Gaussians; t_C is where f^e / alpha falls to `level` (0 in the n, N -> infinity
limit; f^e >= 0 holds for finite n because a draw's own centre is among the terms, so a small level
is used). Estimated by Monte Carlo: draws of the forward process from uniformly chosen training
points, with the streamed log-sum-exp of `diffmem.energy` over the n points.

Gaussian data N(0, Sigma) in the n, N -> infinity limit: t_C solves alpha = (1/2N) sum_i log(1 +
lam_i e^{-2t} / Delta_t) (bisection); isotropic Sigma = s^2 I: t_C = 1/2 log(1 + s^2 / (n^{2/N} -
1)) and f / alpha = 1 + (1 / 2 alpha) log(Delta_t / (Delta_t + s^2 e^{-2t})), clipped at 0.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffmem.errors import InputError
from diffmem.energy import log_sum_exp_sq
from diffmem.sde import ddpm_alpha_bar

__all__ = ["ou_time_of_ddpm_index", "ddpm_index_of_ou_time", "largest_eigenvalue",
           "speciation_time", "excess_entropy", "crossing_time", "collapse_time",
           "isotropic_collapse_time", "isotropic_excess_entropy_ratio", "gaussian_collapse_time",
           "phase_times"]


def _flat(data) -> np.ndarray:
    data = np.asarray(data, np.float64)
    return data.reshape(data.shape[0], -1)


def ou_time_of_ddpm_index(index, **schedule) -> np.ndarray:
    """t = -1/2 log alpha_bar at 0-based DDPM step(s) `index` (schedule kwargs of
    `sde.ddpm_alpha_bar`)."""
    return -0.5 * np.log(ddpm_alpha_bar(**schedule)[np.asarray(index)])


def ddpm_index_of_ou_time(t, **schedule) -> np.ndarray:
    """The first 0-based DDPM step whose OU time -1/2 log alpha_bar reaches t (clipped to the
    grid)."""
    ab = ddpm_alpha_bar(**schedule)
    idx = np.searchsorted(-0.5 * np.log(ab), np.asarray(t, np.float64))
    return np.minimum(idx, len(ab) - 1)


# --------------------------------------------------------------------------------------- speciation
def largest_eigenvalue(data) -> float:
    """Largest eigenvalue of the covariance of the rows of data (n, *S), mean-centred (1/n
    normalisation)."""
    x = _flat(data)
    x = x - x.mean(0)
    if x.shape[0] < x.shape[1]:  # the Gram matrix has the same nonzero spectrum and is smaller
        return float(np.linalg.eigvalsh(x @ x.T / x.shape[0])[-1])
    return float(np.linalg.eigvalsh(x.T @ x / x.shape[0])[-1])


def speciation_time(data, **schedule) -> dict:
    """{"lambda": Lambda, "t_s": 1/2 log Lambda (OU), "index": first 0-based step with alpha_bar < 1
    / Lambda}.

    Lambda <= 1 (e.g. MoLRG with unit variances split over classes) gives t_s <= 0 and index 0: the
    classes are already indistinguishable from the noise's point of view at every step; there is no
    speciation."""
    lam = largest_eigenvalue(data)
    ab = ddpm_alpha_bar(**schedule)
    below = np.nonzero(ab < 1.0 / lam)[0]
    return {"lambda": lam, "t_s": 0.5 * math.log(lam) if lam > 0 else -math.inf,
            "index": int(below[0]) if below.size else len(ab)}


# ----------------------------------------------------------------------------------------- collapse
def excess_entropy(data, ts, *, num_draws: int = 10_000, seed: int = 0, chunk: int = 4096,
                   batch: int = 2048) -> np.ndarray:
    """Monte-Carlo f^e(t) of the empirical measure of data (n, *S) at OU times ts (L,): (L,) float.

    Each t uses `num_draws` draws x = e^{-t} a_mu + sqrt(Delta_t) z (mu uniform), in batches of
    `batch`, each scored against all n points with a streamed log-sum-exp (`chunk` points at a
    time). Runs in float64 when x64 is enabled.
    """
    x0 = _flat(data)
    n, dim = x0.shape
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    pats = jnp.asarray(x0, dtype)

    @functools.partial(jax.jit, static_argnums=2)
    def batch_mean(key, t, rows):
        k1, k2 = jax.random.split(key)
        mu = jax.random.randint(k1, (rows,), 0, n)
        decay, delta = jnp.exp(-t), -jnp.expm1(-2 * t)
        x = decay * pats[mu] + jnp.sqrt(delta) * jax.random.normal(k2, (rows, dim), dtype)
        lse = log_sum_exp_sq(x, decay * pats, 1.0 / delta, chunk)
        return jnp.sum(lse)

    out = []
    for i, t in enumerate(np.asarray(ts, np.float64)):
        if t <= 0:
            raise InputError(f"OU times must be > 0; got {t}.")
        total, done = 0.0, 0
        while done < num_draws:
            rows = min(batch, num_draws - done)
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), i), done)
            total += float(batch_mean(key, jnp.asarray(t, dtype), rows))
            done += rows
        out.append(0.5 + total / num_draws / dim)
    return np.asarray(out)


def crossing_time(ts, values, level: float) -> float:
    """The largest t at which the curve values(t) (increasing on the whole, noisy) is still <=
    level, linearly interpolated to the next grid point; ts[0] when it starts above level, nan if it
    never rises above."""
    ts, v = np.asarray(ts, np.float64), np.asarray(values, np.float64)
    order = np.argsort(ts)
    ts, v = ts[order], v[order]
    above = v > level
    if not above.any():
        return math.nan
    if above.all():
        return float(ts[0])
    i = int(np.nonzero(~above)[0][-1])   # last point at or below the level
    if i == len(ts) - 1:
        return float(ts[-1])
    return float(ts[i] + (level - v[i]) * (ts[i + 1] - ts[i]) / (v[i + 1] - v[i]))


def collapse_time(data, ts=None, *, level: float = 0.05, num_draws: int = 10_000, seed: int = 0,
                  chunk: int = 4096) -> dict:
    """t_C where f^e / alpha falls to `level`, on the grid ts (default: 60 OU times geometric in
    [0.01, 3]).

    Returns {"t": ts, "f": f^e (L,), "alpha": log n / N, "t_c": OU time, "index": its DDPM step,
    "level"}.
    """
    x0 = _flat(data)
    n, dim = x0.shape
    if n < 2:
        raise InputError("The collapse time needs at least 2 training points.")
    ts = np.geomspace(0.01, 3.0, 60) if ts is None else np.asarray(ts, np.float64)
    f = excess_entropy(x0, ts, num_draws=num_draws, seed=seed, chunk=chunk)
    alpha = math.log(n) / dim
    t_c = crossing_time(ts, f / alpha, level)
    return {"t": ts, "f": f, "alpha": alpha, "t_c": t_c, "level": level,
            "index": int(ddpm_index_of_ou_time(t_c)) if np.isfinite(t_c) else -1}


# ---------------------------------------------------------------------------------- Gaussian theory
def isotropic_collapse_time(variance: float, n: int, dim: int) -> float:
    """t_C = 1/2 log(1 + s^2 / (n^{2/N} - 1)) for N(0, s^2 I_N) data and n points (n, N ->
    infinity)."""
    return 0.5 * math.log1p(variance / math.expm1(2 * math.log(n) / dim))


def isotropic_excess_entropy_ratio(t, variance: float, n: int, dim: int) -> np.ndarray:
    """f / alpha = 1 + (1 / 2 alpha) log(Delta_t / (Delta_t + s^2 e^{-2t})), clipped at 0 (n, N ->
    infinity)."""
    t = np.asarray(t, np.float64)
    alpha = math.log(n) / dim
    delta = -np.expm1(-2 * t)
    return np.maximum(1 + np.log(delta / (delta + variance * np.exp(-2 * t))) / (2 * alpha), 0.0)


def gaussian_collapse_time(
    eigenvalues, n: int, dim: int | None = None, *, tol: float = 1e-12
) -> float:
    """t_C solving log n / N = (1/2N) sum_i log(1 + lam_i e^{-2t} / Delta_t) by bisection (the right
    side falls from +inf at t = 0 to 0), for N(mean, Sigma) data with covariance eigenvalues lam and
    n points; dim = N (default: the number of eigenvalues; pass it when only the nonzero ones are
    given)."""
    lam = np.clip(np.asarray(eigenvalues, np.float64), 0, None)
    dim = lam.size if dim is None else int(dim)
    alpha = math.log(n) / dim

    def excess(t):
        return np.sum(np.log1p(lam * math.exp(-2 * t) / -math.expm1(-2 * t))) / (2 * dim) - alpha

    lo, hi = 1e-12, 1.0
    while excess(hi) > 0:
        hi *= 2
        if hi > 1e3:
            raise InputError(
                "No collapse time below t = 1000: is the covariance nonzero and n > 1?"
            )
    if excess(lo) <= 0:
        return 0.0
    while hi - lo > tol * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def phase_times(data, *, collapse: bool = True, **collapse_kwargs) -> dict:
    """Speciation and (optionally) Monte-Carlo collapse times of one training set, plus the Gaussian
    prediction from its covariance spectrum: {"lambda", "t_s", "t_s_index", "t_c", "t_c_index",
    "t_c_gaussian", ...}."""
    x = _flat(data)
    spec = speciation_time(x)
    centred = x - x.mean(0)
    gram = (
        centred @ centred.T / x.shape[0]
        if x.shape[0] < x.shape[1]
        else centred.T @ centred / x.shape[0]
    )
    out = {
        "lambda": spec["lambda"],
        "t_s": spec["t_s"],
        "t_s_index": spec["index"],
        "n": x.shape[0],
        "dim": x.shape[1],
        "t_c_gaussian": gaussian_collapse_time(np.linalg.eigvalsh(gram), x.shape[0], x.shape[1])
        if x.shape[0] > 1
        else math.nan,
    }
    if collapse:
        c = collapse_time(x, **collapse_kwargs)
        out.update(
            t_c=c["t_c"], t_c_index=c["index"], alpha=c["alpha"], curve_t=c["t"], curve_f=c["f"]
        )
    return out
