"""Denoiser Jacobians and their rank (Zhang et al.,
`huijieZH/Diffusion-Model-Generalizability:edm/jacobian.py`).

J = dD(x; sigma)/dx for one state x (*S) is taken dense (n x n, n = prod(S)) with `jax.jacfwd` on
the flattened input. Its rank follows the 99% Frobenius rule of the upstream code:

    rank = 1 + min{k : sqrt(sum_{j<=k} s_j^2) > 0.99 ||J||_F}      (k 0-based, s sorted descending)

`rank_vs_snr` measures rank / n at the states of a model: "trajectory" (the pre-step states of one
18-step EDM Heun trajectory, sigma 80 -> 0.002, rho 7, as jacobian.py) or "forward" (x = y + sigma e
for data y on a sigma grid). Any denoiser D(x (B, *S), sigma (B,)) works: trained, empirical
optimal, closed form. Run under `jax.config.update("jax_enable_x64", True)` for float64 Jacobians
(the upstream uses float64).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffmem.errors import InputError
from diffmem.sde import Denoiser, edm_sigma_steps
from diffmem.solver_steps import edm_step

__all__ = ["FROBENIUS_FRACTION", "ZERO_JACOBIAN_NORM", "EXACT_SVD_MAX_N", "denoiser_jacobian",
           "batched_jacobians", "rank_99", "rank_from_partial", "randomized_singular_values",
           "jacobian_rank", "edm_trajectory_states", "forward_states", "rank_vs_snr",
           "plot_rank_vs_snr"]

FROBENIUS_FRACTION = 0.99
ZERO_JACOBIAN_NORM = 1e-7  # ||J||_F at or below this counts as rank 0 (see `jacobian_rank`)
# above this, singular values come from a randomized estimate (see `singular_values`)
EXACT_SVD_MAX_N = 1024


# ----------------------------------------------------------------------------------------- Jacobian
def denoiser_jacobian(denoiser: Denoiser, x, sigma) -> jax.Array:
    """Dense Jacobian dD(x; sigma)/dx of one state x (*S) at noise level sigma (scalar): (n, n), n =
    prod(S).

    Row i is the derivative of output pixel i (in x's flattened order). Computed with jax.jacfwd (n
    forward passes batched into one), in x's dtype: pass float64 x with x64 enabled for a float64
    Jacobian.
    """
    x = jnp.asarray(x)
    shape, n = x.shape, math.prod(x.shape)
    sig = jnp.full((1,), sigma, x.dtype)

    def flat_d(v):
        return denoiser(v.reshape((1,) + shape), sig).reshape(n)

    return jax.jacfwd(flat_d)(x.reshape(n))


def batched_jacobians(denoiser: Denoiser, xs, sigmas) -> jax.Array:
    """Jacobians of many states: xs (B, *S), sigmas (B,) -> (B, n, n), one vmapped jacfwd (B n rows
    per call)."""
    xs = jnp.asarray(xs)
    sigmas = jnp.broadcast_to(jnp.asarray(sigmas, xs.dtype), xs.shape[:1])
    shape, n = xs.shape[1:], math.prod(xs.shape[1:])

    def one(x, s):
        return jax.jacfwd(lambda v: denoiser(v.reshape((1,) + shape), s[None]).reshape(n))(
            x.reshape(n)
        )

    return jax.vmap(one)(xs, sigmas)


# ------------------------------------------------------------------------------------------- rank
def rank_99(singular_values, fraction: float = FROBENIUS_FRACTION) -> int:
    """1 + min{k : sqrt(sum_{j<=k} s_j^2) > fraction ||J||_F}; s in any order (sorted here), (n,) ->
    int.

    With a truncated spectrum (the top-r values of a randomized estimate) pass `frobenius=` through
    `rank_from_partial` instead: the norm must come from all of J.
    """
    s = np.sort(np.abs(np.asarray(singular_values, np.float64)))[::-1]
    return rank_from_partial(s, float(np.sqrt(np.sum(s**2))), fraction)


def rank_from_partial(
    top_singular_values, frobenius: float, fraction: float = FROBENIUS_FRACTION
) -> int:
    """The 99% rule from the top-r singular values and the exact ||J||_F (e.g. from the dense J).

    Returns r + 1 when the top r values do not reach the threshold (the rank exceeds r: a lower
    bound). A zero matrix has rank 0.
    """
    s = np.sort(np.abs(np.asarray(top_singular_values, np.float64)))[::-1]
    if frobenius <= 0:
        return 0
    cum = np.sqrt(np.cumsum(s**2))
    hit = np.nonzero(cum > fraction * frobenius)[0]
    return int(hit[0]) + 1 if hit.size else s.size + 1


@functools.partial(jax.jit, static_argnums=(1,), static_argnames=("oversample", "power_iters"))
def randomized_singular_values(
    jac, rank: int, key, *, oversample: int = 10, power_iters: int = 2
) -> jax.Array:
    """Top-`rank` singular values of a matrix (n, n) by Halko et al.'s randomized range finder with
    power iterations: Q = orth((J J^T)^q J Omega), s = svd(Q^T J). Accurate for fast-decaying
    spectra."""
    jac = jnp.asarray(jac)
    m = min(rank + oversample, min(jac.shape))
    omega = jax.random.normal(key, (jac.shape[1], m), jac.dtype)
    q, _ = jnp.linalg.qr(jac @ omega)
    for _ in range(power_iters):
        q, _ = jnp.linalg.qr(jac.T @ q)
        q, _ = jnp.linalg.qr(jac @ q)
    return jnp.linalg.svd(q.T @ jac, compute_uv=False)[:rank]


def jacobian_rank(jac, *, method: str = "auto", key=None, max_rank: int | None = None,
                  fraction: float = FROBENIUS_FRACTION, atol: float = ZERO_JACOBIAN_NORM) -> int:
    """Rank of one Jacobian (n, n) by the 99% rule; 0 when ||J||_F <= atol.

    The tolerance matters for denoisers that become locally constant: the empirical optimal denoiser
    at a collapsed state has J = Cov(posterior) / sigma^2 ~ 0 exactly, and the rule applied to
    rounding noise would return an arbitrary rank.

    method "exact": full SVD. "randomized": top singular values by `randomized_singular_values`,
    doubling the sketch (from `max_rank` or 64) until the rule is met inside it, with ||J||_F exact.
    "auto": exact for n <= EXACT_SVD_MAX_N.
    """
    jac = jnp.asarray(jac)
    n = jac.shape[0]
    fro = float(np.linalg.norm(np.asarray(jac)))
    if fro <= atol:
        return 0
    if method == "auto":
        method = "exact" if n <= EXACT_SVD_MAX_N else "randomized"
    if method == "exact":
        return rank_99(np.linalg.svd(np.asarray(jac, np.float64), compute_uv=False), fraction)
    if method != "randomized":
        raise InputError(f"Unknown method {method!r}; valid: 'auto', 'exact', 'randomized'.")
    key = jax.random.key(0) if key is None else key
    r = min(max_rank or 64, n)
    while True:
        s = np.asarray(randomized_singular_values(jac, r, key))
        rank = rank_from_partial(s, fro, fraction)
        if rank <= r or r >= n:
            return min(rank, n)
        r = min(2 * r, n)


# ------------------------------------------------------------------------------------------- states
def edm_trajectory_states(denoiser: Denoiser, x_T, *, num_steps: int = 18, sigma_min: float = 0.002,
                          sigma_max: float = 80.0, rho: float = 7.0):
    """The pre-step states of EDM Heun (Karras et al. 2022 Algorithm 1, S_churn = 0) from x_T (B,
    *S): returns (states (num_steps, B, *S), sigmas (num_steps,), final x (B, *S)); states[0] = x_T
    at sigma_max. The final x equals `diffmem.sampling.edm_heun` (tested)."""
    x_T = jnp.asarray(x_T)
    sig = jnp.asarray(edm_sigma_steps(num_steps, sigma_min, sigma_max, rho), x_T.dtype)

    def step(x, i):  # Heun step from sig[i] to sig[i+1]
        return edm_step(denoiser, x, sig[i], sig[i + 1], True).astype(x.dtype), x

    x, states = jax.lax.scan(step, x_T, jnp.arange(num_steps - 1))
    final = edm_step(denoiser, x, sig[-2], sig[-1], False).astype(x.dtype)  # Euler to sigma = 0
    return jnp.concatenate([states, x[None]]), sig[:-1], final


def forward_states(data, sigmas, key):
    """x = y + sigma e for every data row y (B, *S) and sigma of the grid (L,): (L, B, *S)."""
    data = jnp.asarray(data)
    sig = jnp.asarray(sigmas, data.dtype)
    e = jax.random.normal(key, (sig.shape[0],) + data.shape, data.dtype)
    return data[None] + sig.reshape((-1,) + (1,) * data.ndim) * e


def rank_vs_snr(denoiser: Denoiser, *, states: str, shape: tuple[int, ...] | None = None, data=None,
                sigmas=None, num_latents: int = 8, seed: int = 0, subset=None, method: str = "auto",
                dtype=None, chunk: int = 1) -> dict:
    """rank(J)/n at each noise level for a set of states; every state gives one value (violins over
    them).

    states="trajectory": `num_latents` EDM Heun trajectories (18 steps, 80 -> 0.002, rho 7) from
      N(0, 80^2 I) latents of `shape`; the 18 pre-step states, or those indexed by `subset`.
    states="forward": x = y + sigma e for the rows y of `data` on the grid `sigmas` (default: the
    EDM-18 grid). dtype: float64 by default when x64 is enabled. chunk: states per jacfwd call.
    Returns {"sigma" (L,), "snr" (L,) = 1/sigma, "rank" (L, B) int, "rank_over_n" (L, B), "n"}.
    """
    dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    key = jax.random.key(seed)
    if states == "trajectory":
        if shape is None:
            raise InputError("states='trajectory' needs the example shape (shape=...).")
        x_T = 80.0 * jax.random.normal(key, (num_latents,) + tuple(shape), dtype)
        xs, sig, _ = jax.jit(lambda x: edm_trajectory_states(denoiser, x))(x_T)
        xs, sig = np.asarray(xs), np.asarray(sig)
        if subset is not None:
            xs, sig = xs[np.asarray(subset)], sig[np.asarray(subset)]
    elif states == "forward":
        if data is None:
            raise InputError("states='forward' needs data rows y (B, *S) (data=...).")
        sig = np.asarray(edm_sigma_steps(18)[:-1] if sigmas is None else sigmas, np.float64)
        xs = forward_states(jnp.asarray(data, dtype), sig, key)
    else:
        raise InputError(f"Unknown states {states!r}; valid: 'trajectory', 'forward'.")
    n = math.prod(xs.shape[2:])
    jac_fn = jax.jit(lambda x, s: batched_jacobians(denoiser, x, s))
    ranks = np.zeros(xs.shape[:2], np.int64)
    for i, s in enumerate(np.asarray(sig)):
        for b0 in range(0, xs.shape[1], chunk):
            xb = xs[i, b0:b0 + chunk]
            jacs = jac_fn(xb, jnp.full(xb.shape[:1], s, dtype))
            for j in range(jacs.shape[0]):
                ranks[i, b0 + j] = jacobian_rank(jacs[j], method=method)
    sig = np.asarray(sig, np.float64)
    return {"sigma": sig, "snr": 1.0 / sig, "rank": ranks, "rank_over_n": ranks / n, "n": n}


def plot_rank_vs_snr(result: dict, path: str, *, title: str = "", reference: dict | None = None,
                     lines: dict | None = None) -> None:
    """Violins of rank/n (log axis) per SNR, low SNR on the left; `reference` {snr: value} drawn as
    points (e.g. published medians), `lines` {label: snr} as vertical markers (e.g. speciation /
    collapse)."""
    import matplotlib.pyplot as plt
    order = np.argsort(result["snr"])
    snr, vals = result["snr"][order], result["rank_over_n"][order]
    pos = np.log10(snr)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    data = [np.maximum(v, 1e-4) for v in vals]
    spread = [np.ptp(v) > 0 for v in data]
    if any(spread):
        ax.violinplot([np.log10(v) for v, s in zip(data, spread) if s],
                      positions=pos[np.array(spread)], widths=0.12, showmedians=True)
    ax.plot(pos, [np.log10(np.median(v)) for v in data], "k.-", lw=0.8, label="median")
    if reference:
        ax.plot(
            np.log10(list(reference)), np.log10(list(reference.values())), "r^", label="published"
        )
    for label, s in (lines or {}).items():
        ax.axvline(np.log10(s), ls="--", lw=0.8, color="gray")
        ax.text(np.log10(s), ax.get_ylim()[1], label, fontsize=7, rotation=90, va="top")
    ax.set_xlabel("log10 SNR = log10(1/sigma)")
    ax.set_ylabel("log10 rank(J)/n")
    ax.set_title(title or f"Jacobian rank, n = {result['n']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    from diffmem import viz
    viz.save_figure(fig, path, dpi=120)  # atomic, process 0 only
