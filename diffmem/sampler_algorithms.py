"""The sampling algorithms, as functions of a batched score `score_fn(x (B, *S), t (B,))` or
denoiser `D(x (B, *S), sigma (B,))`: reverse-SDE Euler-Maruyama, the probability-flow ODE
(diffrax), DDPM ancestral, DDIM (and its inversion), EDM Euler / Heun. `diffmem.sampling`
re-exports them beside the registry that builds them for a `Model`; its docstring says how their
noise follows the seeds. Each is a literal transcription of its paper's algorithm, its steps from
`diffmem.solver_steps`.
"""
from __future__ import annotations

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from diffmem.errors import InputError
from diffmem.sample_noise import _check_batch, _noise_keys, per_sample_keys, step_noise
from diffmem.sde import SDE, Denoiser, ScoreFn, _bcast, ddpm_alpha_bar, edm_sigma_steps
from diffmem.solver_steps import ddim_step, edm_step, em_step

__all__ = ["euler_maruyama", "probability_flow_ode", "ddpm_ancestral", "DDIM_SPACINGS",
           "ddim_timesteps", "ddim", "ddim_invert", "edm_euler", "edm_heun"]

# draw all EM noise in one op when it fits in 16M numbers (64 MB float32)
_UPFRONT_NOISE_MAX = 1 << 24


# --------------------------------------------------------------------------- score-based (SDE view)
def euler_maruyama(score_fn: ScoreFn, sde: SDE, x_init: jax.Array, key_or_seeds,
                   num_steps: int = 1000, eps: float | None = None, *,
                   shared_time: bool = False) -> jax.Array:
    """The tutorial's Euler-Maruyama solver of the reverse SDE dx = [f - g^2 s] dt + g dw.

    Time grid linspace(t_max, eps, num_steps) (eps defaults to sde.t_min), dt = t_0 - t_1; each step
    mean = x + (g^2 s(x, t) - f(x, t)) dt, x = mean + sqrt(dt) g z. Returns the mean of the last
    step. x_init (B, *S), key_or_seeds (B,) -> (B, *S).

    shared_time=True calls score_fn with t of shape (1,), the one time of the whole batch, instead
    of (B,). Use it for score functions that broadcast t (`nets.ScoreMLP` does, and then computes
    its time branch once per step instead of once per sample: about half the work of the tutorial's
    network).
    """
    eps = sde.t_min if eps is None else eps
    if not 0 < eps < sde.t_max:
        raise InputError(f"eps must lie in (0, t_max = {sde.t_max}); got {eps}.")
    if num_steps < 2:
        raise InputError(f"num_steps must be >= 2 (the step is t_0 - t_1); got {num_steps}.")
    keys = per_sample_keys(key_or_seeds)
    _check_batch(x_init, keys, "x_init")
    ts = jnp.linspace(sde.t_max, eps, num_steps, dtype=x_init.dtype)
    dt = ts[0] - ts[1]

    def times(x, t):
        return jnp.full((1,) if shared_time else x.shape[:1], t, x.dtype)

    def step(x, t_and_z):
        t, z = t_and_z
        return em_step(score_fn, sde, x, times(x, t), dt, z)[0], None

    shape, n_noisy = x_init.shape[1:], num_steps - 1  # the last step's noise is never used
    if x_init.size * n_noisy <= _UPFRONT_NOISE_MAX:
        # One random op for all steps (cheaper in a scan on CPU); same numbers as drawing step by
        # step.
        noise = jax.vmap(lambda j: step_noise(keys, j, shape, x_init.dtype))(jnp.arange(n_noisy))
        x, _ = jax.lax.scan(step, x_init, (ts[:-1], noise))
    else:
        x, _ = jax.lax.scan(lambda x, j: step(x, (ts[j], step_noise(keys, j, shape, x.dtype))),
                            x_init, jnp.arange(n_noisy))
    return em_step(score_fn, sde, x, times(x, ts[-1]), dt)[1]


def probability_flow_ode(score_fn: ScoreFn, sde: SDE, x_init: jax.Array, t0: float | None = None,
                         t1: float | None = None, solver=None, rtol: float = 1e-5,
                         atol: float = 1e-5, dt0: float | None = None,
                         max_steps: int = 100_000) -> jax.Array:
    """Probability-flow ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) (Song et al. 2021), solved with
    diffrax.

    Integrates from t0 (default t_max) to t1 (default t_min) with `solver` (default Tsit5) and a PID
    step controller; returns x(t1), (B, *S). Each sample is solved with its own adaptive steps (the
    solve is vmapped), so sample i depends on x_init[i] only, as with seeds. dt0=None picks the
    first step automatically.
    """
    t0 = sde.t_max if t0 is None else t0
    t1 = sde.t_min if t1 is None else t1
    _check_batch(x_init, None, "x_init")
    solver = diffrax.Tsit5() if solver is None else solver

    def field(t, x, args):  # one example x (*S); the network sees a batch of one, t of shape (1,)
        xb, tb = x[None], jnp.full((1,), t, x.dtype)
        return (sde.drift(xb, tb) - 0.5 * _bcast(sde.diffusion(tb), xb) ** 2 * score_fn(xb, tb))[0]

    def solve(x):
        sol = diffrax.diffeqsolve(diffrax.ODETerm(field), solver, t0, t1, dt0, x,
                                  stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                                  max_steps=max_steps)
        return sol.ys[-1]

    return jax.vmap(solve)(x_init)


# ----------------------------------------------------------------------------------- DDPM and DDIM
def _vp_x0(denoiser: Denoiser, x: jax.Array, ab) -> jax.Array:
    """x0 prediction at the VP state x_t = sqrt(ab) x0 + sqrt(1 - ab) eps: D(x_t / sqrt(ab),
    sqrt((1-ab)/ab))."""
    return denoiser(x / jnp.sqrt(ab), jnp.full(x.shape[:1], jnp.sqrt((1 - ab) / ab), x.dtype))


def ddpm_ancestral(denoiser: Denoiser, x_T: jax.Array, key_or_seeds, *, num_steps: int = 1000,
                   beta_start: float = 1e-4, beta_end: float = 0.02,
                   clip_x0: bool = True) -> jax.Array:
    """Ho et al. (2020) ancestral sampling (Algorithm 2) with the fixed-small variance beta_tilde_t.

    Written through the x0 prediction, as Ho et al.'s and Pham et al.'s code do: x0 = D(x_t /
    sqrt(ab_t), sigma_t), clipped to [-1, 1] when clip_x0, then x_{t-1} = mean of q(x_{t-1} | x_t,
    x0) + sqrt(beta_tilde_t) z (no noise at the last step). x_T (B, *S) ~ N(0, I), key_or_seeds (B,)
    -> x_0 (B, *S).
    """
    keys = per_sample_keys(key_or_seeds)
    _check_batch(x_T, keys, "x_T")
    betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    # posterior mean = coef_x0 x0 + coef_xt x_t
    coef_x0 = np.sqrt(ab_prev) * betas / (1 - ab)
    coef_xt = np.sqrt(1 - betas) * (1 - ab_prev) / (1 - ab)
    var = betas * (1 - ab_prev) / (1 - ab)                   # beta_tilde
    rev = lambda a: jnp.asarray(a[::-1], x_T.dtype)          # loop index i <-> t = T - 1 - i
    tables = tuple(rev(a) for a in (ab, coef_x0, coef_xt, var))

    def posterior_mean(x, i):
        a, c0, ct, _ = (tab[i] for tab in tables)
        x0 = _vp_x0(denoiser, x, a)
        x0 = jnp.clip(x0, -1, 1) if clip_x0 else x0
        return (c0 * x0 + ct * x).astype(x.dtype)

    def step(x, i):
        z = step_noise(keys, i, x.shape[1:], x.dtype)
        return posterior_mean(x, i) + jnp.sqrt(tables[3][i]) * z, None

    x, _ = jax.lax.scan(step, x_T, jnp.arange(num_steps - 1))
    return posterior_mean(x, num_steps - 1)


DDIM_SPACINGS = ("floor", "leading")


def ddim_timesteps(
    num_steps: int, T: int = 1000, spacing: str = "floor", steps_offset: int = 0
) -> np.ndarray:
    """DDIM's sub-sequence of the T DDPM steps (0-based, increasing), num_steps of them.

    spacing "floor": floor(i T / num_steps), i < num_steps: 0, 50, ..., 950 for 20 of 1000 (the
    official code's range(0, T, T // num_steps) when it divides). "leading": diffusers'
    DDIMScheduler, i * (T // num_steps) + steps_offset; the two differ when num_steps does not
    divide T (7 of 1000: leading 0, 142, 284, ..., 852; floor 0, 142, 285, ..., 857).
    """
    if not 1 <= num_steps <= T:
        raise InputError(f"num_steps must lie in [1, T = {T}]; got {num_steps}.")
    if spacing == "floor":
        if steps_offset:
            raise InputError(
                "steps_offset is a setting of spacing='leading' (diffusers); floor spacing has "
                "none."
            )
        return (np.arange(num_steps) * T) // num_steps
    if spacing == "leading":
        ts = np.arange(num_steps) * (T // num_steps) + steps_offset
        if ts[-1] >= T or steps_offset < 0:
            raise InputError(f"steps_offset = {steps_offset} puts DDIM steps outside [0, {T}).")
        return ts
    raise InputError(f"Unknown DDIM spacing {spacing!r}; valid: {list(DDIM_SPACINGS)}.")


def ddim(denoiser: Denoiser, x_T: jax.Array, key_or_seeds=None, *, num_steps: int = 50,
         eta: float = 0.0, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
         clip_x0: bool = False, final_denoise: bool = True, spacing: str = "floor",
         steps_offset: int = 0) -> jax.Array:
    """Song, Meng & Ermon (2021) DDIM, eq. 12, over `ddim_timesteps(num_steps, T, spacing,
    steps_offset)` of the T-step DDPM schedule (spacing "leading": diffusers' DDIMScheduler grid).

    x_T (B, *S) is the state at the largest step of the grid. eta = 0 is deterministic (seeds
    unused); eta = 1 is DDPM's posterior variance. clip_x0 clips each x0 prediction to [-1, 1]
    (epsilon stays the one the denoiser implies, as in diffusers); the last step returns the x0
    prediction itself, so `jnp.clip(ddim(...), -1, 1)` clips only the final one. final_denoise=False
    stops at the smallest grid level instead (the start of `ddim_invert`).
    """
    keys = _noise_keys(key_or_seeds, eta > 0, "DDIM with eta > 0 draws noise")
    _check_batch(x_T, keys, "x_T")
    ab = ddpm_alpha_bar(T, beta_start, beta_end)
    ts = ddim_timesteps(num_steps, T, spacing, steps_offset)[::-1]
    a_now = jnp.asarray(ab[ts], x_T.dtype)
    # alpha_bar of "t = -1" is 1
    a_next = jnp.asarray(np.concatenate([ab[ts[1:]], [1.0]]), x_T.dtype)

    def step(x, i):  # Song et al. (2021) eq. 12
        a, an = a_now[i], a_next[i]
        sigma = eta * jnp.sqrt((1 - an) / (1 - a) * (1 - a / an))
        x, _ = ddim_step(denoiser, x, a, an, sigma=sigma, clip_x0=clip_x0)
        if keys is not None:
            x = x + sigma * step_noise(keys, i, x.shape[1:], x.dtype)
        return x.astype(x_T.dtype), None

    x, _ = jax.lax.scan(step, x_T, jnp.arange(num_steps if final_denoise else num_steps - 1))
    return x


def ddim_invert(denoiser: Denoiser, x0: jax.Array, num_steps: int = 50, *, T: int = 1000,
                beta_start: float = 1e-4, beta_end: float = 0.02) -> jax.Array:
    """Deterministic DDIM (eta = 0) run in the noising direction over `ddim`'s grid, smallest step
    to largest.

    The data x0 (B, *S) is taken as the state at the smallest grid step (alpha_bar ~ 1), as DDIM
    inversion does; the result is a state at the largest step, which `ddim(...,
    final_denoise=False)` maps back to x0 up to the discretisation error of both passes.
    """
    _check_batch(x0, None, "x0")
    ab = ddpm_alpha_bar(T, beta_start, beta_end)
    levels = jnp.asarray(ab[ddim_timesteps(num_steps, T)], x0.dtype)

    def step(x, i):  # DDIM eq. 12 with eta = 0, from level i to level i + 1
        return ddim_step(denoiser, x, levels[i], levels[i + 1])[0].astype(x.dtype), None

    x, _ = jax.lax.scan(step, x0, jnp.arange(num_steps - 1))
    return x


# ------------------------------------------------------------------------- EDM (Karras et al. 2022)
def edm_euler(denoiser: Denoiser, x_T: jax.Array, key_or_seeds=None, *, num_steps: int = 18,
              sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
              S_churn: float = 0.0, S_min: float = 0.0, S_max: float = math.inf,
              S_noise: float = 1.0) -> jax.Array:
    """Karras et al. (2022) Algorithm 1 without the 2nd-order correction: Euler on the EDM sigma
    grid, num_steps evaluations. x_T (B, *S) ~ N(0, sigma_max^2 I). S_churn > 0 adds Algorithm 2's
    churn (then seeds are needed); default off."""
    return _edm(denoiser, x_T, key_or_seeds, num_steps, sigma_min, sigma_max, rho, False,
                S_churn, S_min, S_max, S_noise)


def edm_heun(denoiser: Denoiser, x_T: jax.Array, key_or_seeds=None, *, num_steps: int = 18,
             sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
             S_churn: float = 0.0, S_min: float = 0.0, S_max: float = math.inf,
             S_noise: float = 1.0) -> jax.Array:
    """Karras et al. (2022) Algorithm 1: Heun's method on the EDM sigma grid, the 2nd-order
    correction at every step but the last (to sigma = 0): 2 num_steps - 1 evaluations (35 for 18).
    x_T (B, *S) ~ N(0, sigma_max^2 I). S_churn > 0 gives Algorithm 2 (stochastic; needs seeds);
    default off."""
    return _edm(denoiser, x_T, key_or_seeds, num_steps, sigma_min, sigma_max, rho, True,
                S_churn, S_min, S_max, S_noise)


def _edm(denoiser, x_T, key_or_seeds, num_steps, sigma_min, sigma_max, rho, heun, S_churn, S_min,
         S_max, S_noise):
    if num_steps < 1:
        raise InputError(f"num_steps must be >= 1; got {num_steps}.")
    keys = _noise_keys(key_or_seeds, S_churn > 0, "S_churn > 0 adds noise (Algorithm 2)")
    _check_batch(x_T, keys, "x_T")
    # (N + 1,), ends at 0
    sig = jnp.asarray(edm_sigma_steps(num_steps, sigma_min, sigma_max, rho), x_T.dtype)
    gamma_max = min(S_churn / num_steps, math.sqrt(2) - 1)

    def step(x, i, second_order):
        t, t_next = sig[i], sig[i + 1]
        if keys is not None:  # Algorithm 2: raise the noise level to t_hat = (1 + gamma) t
            gamma = jnp.where((t >= S_min) & (t <= S_max), gamma_max, 0.0).astype(x.dtype)
            t_hat = t + gamma * t
            # sqrt(t_hat^2 - t^2) written so that gamma = 0 gives exactly 0 (no fused-multiply-add
            # NaN)
            x = x + t * jnp.sqrt(gamma * (2 + gamma)) * S_noise * step_noise(
                keys, i, x.shape[1:], x.dtype
            )
        else:
            t_hat = t
        return edm_step(denoiser, x, t_hat, t_next, second_order).astype(x_T.dtype)

    x, _ = jax.lax.scan(lambda x, i: (step(x, i, heun), None), x_T, jnp.arange(num_steps - 1))
    return step(x, num_steps - 1, False)  # the last step, to sigma = 0, is always Euler
