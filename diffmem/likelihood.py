"""log p(x) by the probability-flow ODE (Song et al. 2021), for any score function or denoiser.

    log p_{t0}(x) = log p_T(x_T) + integral_{t0}^{T} div f~(x_t, t) dt,   f~ = f - 1/2 g^2 s

integrated with diffrax from t_eval to T, the divergence exact (d Jacobian-vector products of the
batched drift: examples are independent, so one jvp with tangent e_j gives every example's column j)
or by Hutchinson's estimator (Rademacher or Gaussian probes, fixed for the solve; each example draws
its own probes from fold_in(key, its seed), so its estimate depends on its seed alone, not on the
other rows, and the probe errors of different examples are independent: a batch mean has the
variance of independent estimates). Energy = -log p.
"""
from __future__ import annotations

import math
import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from diffmem.sde import SDE, Denoiser, ScoreFn, _bcast, score_from_denoiser
from diffmem.errors import InputError

__all__ = ["exact_divergence", "hutchinson_divergence", "hutchinson_probes", "log_likelihood"]


def _drift(score_fn: ScoreFn, sde: SDE):
    def drift(x, t):
        tb = jnp.full((1,), t, x.dtype)
        return sde.drift(x, tb) - 0.5 * _bcast(sde.diffusion(tb), x) ** 2 * score_fn(x, tb)
    return drift


def exact_divergence(f, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(f(x), div f(x)) per example for a batched, example-wise f: x (B, *S) -> ((B, *S), (B,))."""
    y, f_lin = jax.linearize(f, x)
    d = math.prod(x.shape[1:])
    basis = jnp.eye(d, dtype=x.dtype).reshape((d,) + x.shape[1:])

    def column(e):  # J e for every example at once
        return f_lin(jnp.broadcast_to(e, x.shape)).reshape(x.shape[0], d)

    cols = jax.lax.map(column, basis) if d > 16 else jax.vmap(column)(basis)  # (d, B, d)
    return y, jnp.einsum("jbj->b", cols)


def hutchinson_divergence(f, x: jax.Array, probes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(f(x), mean_p v_p . J v_p) with probes (P, B, *S)."""
    y, f_lin = jax.linearize(f, x)
    est = jax.vmap(lambda v: jnp.sum((f_lin(v) * v).reshape(x.shape[0], -1), axis=-1))(probes)
    return y, jnp.mean(est, axis=0)


def hutchinson_probes(key: jax.Array, seeds: jax.Array, num_probes: int, shape: tuple[int, ...],
                      probe: str = "rademacher", dtype=jnp.float32) -> jax.Array:
    """Each example's own probes: (B, num_probes, *shape), row i drawn from fold_in(key,
    seeds[i])."""
    if probe == "rademacher":
        draw = lambda k: jax.random.rademacher(k, (num_probes,) + tuple(shape), dtype)
    elif probe == "gaussian":
        draw = lambda k: jax.random.normal(k, (num_probes,) + tuple(shape), dtype)
    else:
        raise InputError(f"Unknown probe {probe!r}; choose 'rademacher' or 'gaussian'.")
    seeds = (seeds if isinstance(seeds, jax.Array) else np.asarray(seeds, np.int64)).astype(
        jnp.uint32
    )
    return jax.vmap(lambda s: draw(jax.random.fold_in(key, s)))(seeds)


def log_likelihood(score_fn: ScoreFn | None, sde: SDE, x: jax.Array, *,
                   denoiser: Denoiser | None = None, t_eval: float | None = None,
                   divergence: str = "exact", num_probes: int = 1, probe: str = "rademacher",
                   key: jax.Array | None = None, seeds: jax.Array | None = None, solver=None,
                   rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 16_384, prior_logp=None,
                   return_stats: bool = False):
    """log p_{t_eval}(x) for x (B, *S) -> (B,) under the model's probability-flow ODE.

    Give a batched `score_fn(x, t)` or a `denoiser(x, sigma)`. t_eval defaults to sde.t_min. Every
    example has its own adaptive solve (vmapped; default Dopri5, the reference's RK45 pair, with the
    given tolerances), so its step sizes, and log p(x_i), do not depend on the other rows.
    `divergence` is "exact" or "hutchinson" (`num_probes` Rademacher/Gaussian probes per example;
    example i's from fold_in(key, seeds[i]), `seeds` (B,) integers in [0, 2**32), default its row
    index 0..B-1). Give each example a fixed seed (e.g. its dataset index) to make its estimate
    independent of the batch it is in: log p(x_i) is then the same alone or beside any other rows.
    Distinct seeds give independent probes, so the probe errors of a batch are uncorrelated and
    average out in a batch mean (bits/dim with one probe); equal seeds share probes.
    `prior_logp(x_T) -> (B,)` replaces the SDE's Gaussian prior at T (e.g. an exact marginal in
    tests). Jit it around the call (compiled once per shape):
    `jax.jit(functools.partial(log_likelihood, score_fn, sde))(x)`.

    return_stats=False: a failed solve (e.g. max_steps reached) raises. return_stats=True: returns
    (log_p (B,), stats) instead, stats = {"num_steps", "num_accepted_steps", "num_rejected_steps":
    (B,) int, "result": (B,) int, diffrax's result code (0 = successful)}, and failures are reported
    there, not raised.
    """
    if jnp.ndim(x) < 2:
        raise InputError(f"log_likelihood takes a batch x (B, *S), e.g. (B, 2) or (B, H, W, C); "
                         f"got shape {jnp.shape(x)}. Pass one example as x[None].")
    if score_fn is None:
        if denoiser is None:
            raise InputError("Give a score_fn or a denoiser.")
        score_fn = score_from_denoiser(denoiser, sde)
    t0 = sde.t_min if t_eval is None else t_eval
    drift = _drift(score_fn, sde)
    shape = (1,) + x.shape[1:]  # one example, as a batch of one for the batched score / denoiser
    probes = None  # per-example Hutchinson probes (B, P, *shape), passed to each solve as its args
    if divergence == "exact":
        field = lambda t, y: exact_divergence(lambda z: drift(z, t), y)
    elif divergence == "hutchinson":
        if key is None:
            raise InputError("Hutchinson's estimator needs a `key` for its probes.")
        if seeds is None:
            seeds = jnp.arange(x.shape[0], dtype=jnp.uint32)
        elif jnp.shape(seeds) != (x.shape[0],):
            raise InputError(f"seeds must be one integer per example, shape ({x.shape[0]},); got "
                             f"{jnp.shape(seeds)}.")
        # (B, P, 1, *S): example i's probes, each a batch of one like the example in its solve.
        probes = hutchinson_probes(key, seeds, num_probes, shape, probe, x.dtype)
        field = lambda t, y, v: hutchinson_divergence(lambda z: drift(z, t), y, v)
    else:
        raise InputError(f"Unknown divergence {divergence!r}; choose 'exact' or 'hutchinson'.")

    def vector_field(t, state, args):
        y, _ = state
        return field(t, y) if args is None else field(t, y, args)

    term = diffrax.ODETerm(vector_field)
    prior = sde.prior_logp if prior_logp is None else prior_logp

    def one(x_i, probes_i):  # the probability-flow ODE of one example, with its own adaptive steps
        sol = diffrax.diffeqsolve(term, solver or diffrax.Dopri5(), t0, sde.t_max, None,
                                  (x_i.reshape(shape), jnp.zeros((1,), x.dtype)), args=probes_i,
                                  stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                                  max_steps=max_steps, throw=not return_stats)
        x_T, delta = sol.ys[0][-1], sol.ys[1][-1]
        stats = {k: sol.stats[k] for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")}
        stats["result"] = jnp.asarray(sol.result._value, jnp.int32)
        return (prior(x_T) + delta)[0], stats

    log_p, stats = jax.vmap(one)(x, probes)
    return (log_p, stats) if return_stats else log_p
