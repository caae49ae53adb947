"""Critical times and basins of attraction (Pham et al.,
`Lemon-cmd/Diffusion-Models-and-Associative-Memory`).

Image version (`run_critical_times.py`; notes A.1): a sample x0 in [-1, 1] is noised with DDPM's
forward
process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (1000 linear betas, 0-based t, fresh eps for
    every
trial and t) and reconstructed with their DDIM (eta = 0): n = min(20, t) steps of stride ceil(t / n)
along t, t - s, ... while > 0, returning the *last x0 prediction* clamped to [-1, 1]. It counts as
recovered iff
distance(x0, x0_hat) <= delta (LPIPS, delta = 0.1). Over t in range(1, 1000, 25), with 10 trials:

    prob_i = mean over sample i's trials of "recovered";
    alive <- alive AND recovered (per trial, sticky)
    stop="batch"      (their code): if all(prob_i < p) over the batch, stop before updating; else Tc
                      <- t for every alive trial of the batch.
    stop="per_sample" (batch-independent default): sample i's scan ends at its first t with prob_i <
    p.

Tc starts at the first t (1). The radius is ||x0 - x_Tc||_2 for a fresh draw of x_Tc (so it includes
the (1 - sqrt(abar)) x0 shrinkage).

Toy version (`toy_example.py::find_optimal_time`; notes A.2): VE noising x_t = x0 + marginal_std(t)
z, reverse Euler-Maruyama with int(1000 t) points of linspace(t, 1e-3, .), returning the last mean;
recovered iff the Euclidean distance <= delta (no default: upstream uses 0.1, 0.05 and 0.5 in
different places); t_opt is the last t before the first t whose recovered fraction is < p (0 if the
first fails), one value per sample.

Everything is batched: one network call evaluates every (sample, trial, t) row of a block of scan
times. Noise for sample i (its global index, so shards over samples agree), scan step l and trial j
comes from fold_in(fold_in(fold_in(key(seed), i), l), j), independent of batching.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffmem.errors import InputError
from diffmem.sde import SDE, Denoiser, ScoreFn, ddpm_alpha_bar
from diffmem.solver_steps import ddim_step, em_step

__all__ = ["STOP_RULES", "IMAGE_TIMES", "RADIUS_STEP", "Distance", "l2_distance", "lpips_distance",
           "trial_noise", "ddim_chain", "ddim_reconstruct", "em_points", "em_reconstruct",
           "apply_stop_rule", "image_critical_times", "toy_critical_times",
           "log_volume_hypersphere"]

STOP_RULES = ("per_sample", "batch")
IMAGE_TIMES = tuple(range(1, 1000, 25))
RADIUS_STEP = 1 << 20  # the fold_in tag of the radius draw (beyond any scan index)
Distance = Callable[[jax.Array, jax.Array], jax.Array]  # (B, *S), (B, *S) -> (B,)


def l2_distance(x, y) -> jax.Array:
    """Euclidean distance per row of (B, *S) arrays."""
    return jnp.sqrt(jnp.sum(jnp.reshape(x - y, (x.shape[0], -1)) ** 2, axis=-1))


def lpips_distance(weights) -> Distance:
    """LPIPS (diffmem.metrics.lpips, weights from `lpips.load_weights`) as a `Distance` for images
    in [-1, 1]."""
    from diffmem.metrics import lpips
    return lambda x, y: lpips.lpips(weights, x, y)


def trial_noise(seed: int, sample_ids, steps, trials: int, shape) -> jax.Array:
    """(M, trials, *shape) standard normals; row m from fold_in(fold_in(fold_in(key(seed), id_m),
    step_m), j)."""
    base = jax.random.key(seed)

    def one(i, ti):
        k = jax.random.fold_in(jax.random.fold_in(base, i), ti)
        return jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(k, j), tuple(shape)))(
            jnp.arange(trials)
        )

    return jax.vmap(one)(jnp.asarray(sample_ids, jnp.uint32), jnp.asarray(steps, jnp.uint32))


# ------------------------------------------------------------------------------------- DDIM (image)
def ddim_chain(t: int) -> list[int]:
    """Pham et al.'s DDIM time chain from t: n = min(20, t), stride max(1, ceil(t / n)), t, t - s,
    ... > 0."""
    n = min(20, t)
    stride = max(1, math.ceil(t / n))
    return list(range(t, 0, -stride))


def ddim_reconstruct(denoiser: Denoiser, x_t, t_rows, alpha_bar, num_iters: int = 20) -> jax.Array:
    """Pham et al.'s DDIM (eta = 0) from x_t (B, *S) at per-row 0-based DDPM steps t_rows (B,) >= 1;
    returns the last x0 prediction clamped to [-1, 1]. alpha_bar: the (T,) table; num_iters >= the
    longest chain (20). Rows whose chain is shorter are masked after their last step (one network
    call per iteration)."""
    x_t = jnp.asarray(x_t)
    t = jnp.asarray(t_rows, jnp.int32)
    ab = jnp.asarray(alpha_bar, x_t.dtype)
    n = jnp.minimum(20, t)
    stride = jnp.maximum(1, -(-t // n))
    bc = lambda v: v.reshape((-1,) + (1,) * (x_t.ndim - 1))

    def body(carry, j):
        x, x0_last = carry
        tau = t - j * stride
        active = tau > 0
        a = ab[jnp.maximum(tau, 0)]
        tau_next = tau - stride
        a_next = jnp.where(tau_next >= 0, ab[jnp.maximum(tau_next, 0)], 1.0)
        x_new, x0 = ddim_step(denoiser, x, a, a_next)
        return (jnp.where(bc(active), x_new, x), jnp.where(bc(active), x0, x0_last)), None

    (_, x0), _ = jax.lax.scan(body, (x_t, jnp.zeros_like(x_t)), jnp.arange(num_iters))
    return jnp.clip(x0, -1.0, 1.0)


# --------------------------------------------------------------------------------- reverse EM (toy)
def em_points(t, steps_per_unit: int = 1000) -> np.ndarray:
    """The toy's number of time points int(steps_per_unit t), computed as upstream in float64 (>=
    2)."""
    return np.maximum(
        np.asarray(steps_per_unit * np.asarray(t, np.float64), np.float64).astype(np.int64), 2
    )


def em_reconstruct(score_fn: ScoreFn, sde: SDE, x_t, t_rows, num_points, keys, *, eps: float = 1e-3,
                   max_steps: int | None = None) -> jax.Array:
    """The toy's reverse Euler-Maruyama from per-row times t_rows (B,) over num_points (B,) points
    of
    linspace(t, eps, .) (`em_points`), step (t - eps) / (points - 1); mean = x + g^2 s(x, tau) dt,
    x = mean + sqrt(dt) g z; returns the last mean. keys (B,) typed keys; step j's noise from
        fold_in(key, j).
    max_steps (static) >= max(num_points)."""
    x_t = jnp.asarray(x_t)
    t = jnp.asarray(t_rows, x_t.dtype)
    num = jnp.asarray(num_points, jnp.int32)
    dt = (t - eps) / (num - 1)
    max_steps = int(max_steps or np.max(num_points))
    bc = lambda v: v.reshape((-1,) + (1,) * (x_t.ndim - 1))

    def body(carry, j):
        x, mean_last = carry
        tau = t - j * dt
        active = j < num
        z = jax.vmap(
            lambda k: jax.random.normal(jax.random.fold_in(k, j), x_t.shape[1:], x_t.dtype)
        )(keys)
        x_new, mean = em_step(score_fn, sde, x, tau, dt, z)
        return (jnp.where(bc(active), x_new, x), jnp.where(bc(active), mean, mean_last)), None

    (_, mean), _ = jax.lax.scan(body, (x_t, x_t), jnp.arange(max_steps))
    return mean


# --------------------------------------------------------------------------------------- stop rules
def apply_stop_rule(rec: np.ndarray, ts, *, p: float = 0.9, stop: str = "per_sample",
                    initial: float | None = None, per_trial: bool = True):
    """Tc (B, trials) from recovered flags rec (L, B, trials) over the scan times ts (L,), by the
    rules of the module docstring (the batch is all B samples for stop="batch"). Rows of rec after a
    sample's stop are never read, so they may be anything. per_trial=False is the toy rule (t_opt
    per sample, no sticky trials). Returns (tc (B, trials), stopped_at (B,) index into ts of the t
    that stopped the scan, L if none)."""
    if stop not in STOP_RULES:
        raise InputError(f"Unknown stop rule {stop!r}; valid: {list(STOP_RULES)}.")
    ts = np.asarray(ts)
    num_t, b, trials = rec.shape
    tc = np.full((b, trials), ts[0] if initial is None else initial, dtype=np.float64)
    alive = np.ones((b, trials), bool)
    active = np.ones(b, bool)
    stopped_at = np.full(b, num_t)
    for ti in range(num_t):
        if not active.any():
            break
        r = rec[ti].astype(bool)
        prob = r.mean(-1)
        if per_trial:
            alive &= r | ~active[:, None]
        if stop == "batch":
            if np.all(prob < p):
                stopped_at[:] = ti
                break
            update = alive if per_trial else np.ones_like(alive)
            tc[update] = ts[ti]
        else:
            fail = active & (prob < p)
            stopped_at[fail] = ti
            active &= ~fail
            update = (alive if per_trial else np.ones_like(alive)) & active[:, None]
            tc[update] = ts[ti]
    return tc, stopped_at


def _scan(recovered: Callable, ts, num: int, trials: int, *, p: float, stop: str, initial,
          per_trial: bool, rows_per_call: int, progress: bool = False):
    """Run the scan in blocks of scan times, each block ONE batched `recovered(local_ids (M,),
    t_index (M,)) -> (M, trials) bool` call over the still-active samples; returns apply_stop_rule's
    output on the gathered rec."""
    rec = np.zeros((len(ts), num, trials), bool)
    block = max(1, rows_per_call // max(num * trials, 1))
    ti = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(ts), desc="critical times", leave=False)
    while ti < len(ts):
        live = np.arange(num)
        if ti:  # samples whose scan has not stopped within the times done so far
            stopped_at = apply_stop_rule(
                rec[:ti], ts[:ti], p=p, stop=stop, initial=initial, per_trial=per_trial
            )[1]
            live = np.nonzero(stopped_at >= ti)[0]
        if live.size == 0:
            break
        block = max(1, rows_per_call // max(live.size * trials, 1))
        idx = np.arange(ti, min(ti + block, len(ts)))
        ids = np.tile(live, idx.size)
        tix = np.repeat(idx, live.size)
        r = np.asarray(recovered(ids, tix)).reshape(idx.size, live.size, trials)
        rec[idx[:, None], live[None, :]] = r
        ti += idx.size
        if bar is not None:
            bar.update(idx.size)
    if bar is not None:
        bar.close()
    return apply_stop_rule(rec, ts, p=p, stop=stop, initial=initial, per_trial=per_trial)


def _pad_rows(n: int) -> int:
    """Rows padded up to a power of two (at least 8) so few distinct batch shapes are compiled."""
    return max(8, 1 << (n - 1).bit_length())


def _in_fixed_blocks(call, local: np.ndarray, tix: np.ndarray, rows: int) -> np.ndarray:
    """`call(samples, time_indices)` over blocks of exactly `rows` (the last padded by repeating its
    final row, so one compiled shape serves every call); the results without the padding,
    concatenated."""
    out = []
    for c in range(0, len(local), rows):
        lc, tc = local[c:c + rows], tix[c:c + rows]
        pad = rows - len(lc)
        lp, tp = np.r_[lc, np.repeat(lc[-1:], pad)], np.r_[tc, np.repeat(tc[-1:], pad)]
        out.append(np.asarray(call(lp, tp))[:len(lc)])
    return np.concatenate(out)


# ------------------------------------------------------------------------------------ image version
def image_critical_times(denoiser: Denoiser, samples, *, distance: Distance = l2_distance,
                         delta: float = 0.1, trials: int = 10, ts=IMAGE_TIMES, p: float = 0.9,
                         stop: str = "per_sample", batch_size: int | None = None, seed: int = 0,
                         sample_ids=None, rows_per_call: int = 2048, alpha_bar=None,
                         progress: bool = False) -> dict:
    """Pham et al.'s critical time and radius of each sample (B, *S) in [-1, 1] (module docstring).

    stop="batch" applies the break to consecutive batches of `batch_size` samples (their batch;
    default all), recorded in the output as "batch". sample_ids (B,): global indices for the noise
    (default 0..B-1). Returns {"time" (B, trials), "radius" (B, trials), "delta", "ts", "stop",
    "batch" (B,) batch index, "p"}.
    """
    # host array: rows are gathered here, one device call per block
    x0 = np.asarray(samples, np.float32)
    b, shape = x0.shape[0], x0.shape[1:]
    ids = np.arange(b) if sample_ids is None else np.asarray(sample_ids)
    ts = np.asarray(ts, np.int64)
    if ts.min() < 1 or ts.max() > 999:
        raise InputError("Image scan times are 0-based DDPM steps in [1, 999].")
    ab_np = ddpm_alpha_bar() if alpha_bar is None else np.asarray(alpha_bar, np.float64)
    ab = jnp.asarray(ab_np, jnp.float32)

    @functools.partial(jax.jit, static_argnums=(3,))
    def rows_recovered(x, gid, tix, num_iters):
        t = jnp.asarray(ts)[tix]
        z = trial_noise(seed, gid, tix, trials, shape).reshape((-1,) + shape)
        x = jnp.repeat(x, trials, axis=0)
        tr = jnp.repeat(t, trials)
        a = ab[tr].reshape((-1,) + (1,) * len(shape))
        x_t = jnp.sqrt(a) * x + jnp.sqrt(1 - a) * z
        x_hat = ddim_reconstruct(denoiser, x_t, tr, ab, num_iters)
        return (distance(x, x_hat) <= delta).reshape(-1, trials)

    iters = min(20, int(ts.max()))
    # one compiled shape per call
    rows = _pad_rows(min(max(rows_per_call // trials, 1), b * len(ts)))

    def recovered_for(offset):
        def recovered(local, tix):
            return _in_fixed_blocks(
                lambda lp, tp: rows_recovered(x0[offset + lp], ids[offset + lp], tp, iters),
                local,
                tix,
                rows,
            )
        return recovered

    groups = (
        [(0, b)]
        if stop != "batch" or not batch_size
        else [(s, min(s + batch_size, b)) for s in range(0, b, batch_size)]
    )
    tc = np.zeros((b, trials))
    for s0, s1 in groups:
        tc[s0:s1] = _scan(recovered_for(s0), ts, s1 - s0, trials, p=p, stop=stop, initial=ts[0],
                          per_trial=True, rows_per_call=rows_per_call, progress=progress)[0]
    radius = _image_radius(x0, tc, ab_np, ids, seed, trials)
    batch_index = np.zeros(b, np.int64)
    for g, (s0, s1) in enumerate(groups):
        batch_index[s0:s1] = g
    return {"time": tc, "radius": radius, "delta": float(delta), "ts": ts, "stop": stop,
            "batch": batch_index, "p": float(p), "trials": trials}


def _image_radius(x0, tc, ab, ids, seed, trials):
    """||x0 - x_Tc|| with fresh noise (step tag RADIUS_STEP), per trial: (B, trials)."""
    a = np.asarray(ab[tc.astype(np.int64)], np.float32)
    return np.asarray(_radius(x0, a, ids, seed, trials), np.float64)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _radius(x0, scale, ids, seed, trials):
    """||x0 - (sqrt(scale) x0 + sqrt(1 - scale) z)|| per (sample, trial); scale (B, trials) =
    alpha_bar at Tc."""
    shape = x0.shape[1:]
    # (B, trials, *S)
    z = trial_noise(seed, ids, jnp.full(ids.shape, RADIUS_STEP), trials, shape)
    a = scale.reshape(scale.shape + (1,) * len(shape))
    x_t = jnp.sqrt(a) * x0[:, None] + jnp.sqrt(1 - a) * z
    return jnp.sqrt(jnp.sum((x_t - x0[:, None]).reshape(scale.shape + (-1,)) ** 2, -1))


# -------------------------------------------------------------------------------------- toy version
def toy_critical_times(score_fn: ScoreFn, sde: SDE, samples, *, delta: float, trials: int = 10,
                       ts=None, p: float = 0.9, seed: int = 0, sample_ids=None,
                       rows_per_call: int = 4096, eps: float = 1e-3, steps_per_unit: int = 1000,
                       progress: bool = False) -> dict:
    """Pham et al.'s toy t_opt and radius per sample (B, d) (module docstring); delta is required
    (upstream uses 0.1, 0.05 and 0.5 in different entry points). ts defaults to linspace(0.01, 1,
    500). Returns {"time" (B,), "radius" (B, trials), "delta", "ts", "p"}."""
    if delta is None or not delta > 0:
        raise InputError("delta (the Euclidean recovery radius) is required and must be > 0.")
    x0 = np.asarray(samples)
    b, shape = x0.shape[0], x0.shape[1:]
    ids = np.arange(b) if sample_ids is None else np.asarray(sample_ids)
    ts = np.linspace(0.01, 1.0, 500) if ts is None else np.asarray(ts, np.float64)
    if ts.min() <= eps:
        raise InputError(f"Scan times must exceed eps = {eps}.")

    @functools.partial(jax.jit, static_argnums=(3,))
    def rows_recovered(x, gid, tix, max_steps):
        t = jnp.asarray(ts, x.dtype)[tix]
        tr = jnp.repeat(t, trials)
        z = trial_noise(seed, gid, tix, trials, shape).reshape((-1,) + shape).astype(x.dtype)
        x = jnp.repeat(x, trials, axis=0)
        x_t = x + sde.marginal_std(tr).reshape((-1,) + (1,) * len(shape)) * z
        base = jax.random.key(seed + 1)
        keys = jax.vmap(
            lambda i, ti, j: jax.random.fold_in(
                jax.random.fold_in(jax.random.fold_in(base, i), ti), j
            )
        )(jnp.repeat(gid.astype(jnp.uint32), trials), jnp.repeat(tix.astype(jnp.uint32), trials),
          jnp.tile(jnp.arange(trials, dtype=jnp.uint32), gid.shape[0]))
        nums = jnp.repeat(jnp.asarray(em_points(ts, steps_per_unit))[tix], trials)
        x_hat = em_reconstruct(score_fn, sde, x_t, tr, nums, keys, eps=eps, max_steps=max_steps)
        return (l2_distance(x, x_hat) <= delta).reshape(-1, trials)

    max_steps = int(em_points(ts, steps_per_unit).max())
    # one compiled shape per call
    rows = _pad_rows(min(max(rows_per_call // trials, 1), b * len(ts)))

    def recovered(local, tix):
        return _in_fixed_blocks(
            lambda lp, tp: rows_recovered(x0[lp], ids[lp], tp, max_steps), local, tix, rows
        )

    tc = _scan(recovered, ts, b, trials, p=p, stop="per_sample", initial=0.0, per_trial=False,
               rows_per_call=rows_per_call, progress=progress)[0][:, 0]
    std = np.where(tc > 0, np.asarray(sde.marginal_std(np.maximum(tc, 1e-12))), 0.0)
    radius = _toy_radius(ids, std.astype(np.float32), seed, trials, shape)
    return {"time": tc, "radius": radius, "delta": float(delta), "ts": ts, "p": float(p),
            "trials": trials}


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _toy_radius(ids, std, seed, trials, shape):
    """||std z|| per (sample, trial), z the radius draw (VE noising x_t = x0 + std z)."""
    z = trial_noise(seed, ids, jnp.full(ids.shape, RADIUS_STEP), trials, shape)
    return jnp.sqrt(jnp.sum((std[:, None, None] * z.reshape(z.shape[:2] + (-1,))) ** 2, -1))


def log_volume_hypersphere(r, dim: int):
    """log volume of a d-ball of radius r: (d/2) log(pi r^2) - lgamma(d/2 + 1) (d = the data
    dimension)."""
    return 0.5 * dim * np.log(np.pi * np.asarray(r, np.float64) ** 2) - math.lgamma(dim / 2 + 1)
