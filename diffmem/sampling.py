"""Samplers: reverse-SDE Euler-Maruyama, the probability-flow ODE, DDPM ancestral, DDIM, EDM
Euler/Heun.

Every sampler takes a batched score `score_fn(x (B, *S), t (B,))` or denoiser `D(x (B, *S), sigma
(B,))` (EDM's unscaled view, see `diffmem.sde`) and never asks what is behind it. All are
jit-compatible, with their loops as `lax.scan`.

Reproducibility: the samplers that draw noise take per-sample integer seeds (B,) (or a (B,) array of
typed keys). Sample i's start comes from `fold_in(key(seed_i), 0)` and its noise at step j from
`fold_in(fold_in(key(seed_i), 1), j)`, never from a batch-level key, so sample i depends only on its
seed. `sample_sharded` runs any `seeds -> samples` function over a 1-D device mesh in blocks of one
shape, each seed in a fixed slot, so that any split of a seed range across calls, devices or jobs
gives identical samples, bit for bit, on hosts of one setup (its docstring says what else the bits
depend on).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from diffmem.errors import InputError
from diffmem.sde import SDE, Denoiser, ScoreFn, _bcast, ddpm_alpha_bar, edm_sigma_steps

from diffmem.ks_sampler import KSResult, kadkhodaie_simoncelli, ks_recursion_iterations  # noqa: F401
from diffmem.sample_noise import (
    _check_batch,
    _noise_keys,
    initial_noise,
    per_sample_keys,  # noqa: F401
    step_noise,
    tutorial_init,
)
from diffmem.sharded import SAMPLE_BLOCK, sample_sharded, seed_slots  # noqa: F401 (re-exported)
from diffmem.solver_steps import ddim_step, edm_slope, edm_step, em_step  # noqa: F401 (re-exported)

__all__ = ["per_sample_keys", "initial_noise", "step_noise", "tutorial_init", "euler_maruyama",
           "probability_flow_ode", "ddpm_ancestral", "DDIM_SPACINGS", "ddim_timesteps", "ddim",
           "ddim_invert", "edm_euler", "edm_heun", "SAMPLE_BLOCK", "seed_slots", "sample_sharded",
           "Sampler", "SAMPLERS", "register", "get_sampler", "sampler_help", "KSResult",
           "kadkhodaie_simoncelli", "ks_recursion_iterations", "SampleInfo", "KS_INFO_FIELDS",
           "not_converged_message", "ddim_step", "em_step", "edm_step", "edm_slope"]

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


# ----------------------------------------------------------------------------- the sampler registry
@dataclasses.dataclass(frozen=True)
class Sampler:
    """A sampler of the registry: `build(model, **settings)` returns `run(seeds (B,)) -> samples (B,
    *S)` for a `diffmem.model.Model` (anything with denoiser, shape, sde, time_score, sigma_min,
    sigma_max, data_range); settings left out take their defaults. A plain denoiser D(x, sigma) is
    wrapped first: `Model.from_denoiser(D, shape=S, sigma_range=(0.002, 80.0))`, or sampled in one
    call by `diffmem.sample(D, seeds, shape=S, sampler=name)`.

    settings: every setting's default, a value or a function of the model (e.g. its sigma range). A
    config's `sample` section supplies defaults for its own sampler (`sample.sampler`), its
    `diffusion` section the DDPM grid (timesteps, beta_start, beta_end) for every sampler; the
    resolved settings are recorded with the samples. needs_sde: the sampler integrates the model's
    SDE (toy models) rather than calling D.
    """
    name: str
    builder: Callable  # builder(model, **settings) -> run, every setting given
    settings: dict
    needs_sde: bool = False
    doc: str = ""

    def build(self, model, **settings) -> Callable:
        """`run(seeds (B,)) -> samples (B, *S)` for `model` with `settings` (the rest:
        `resolve`)."""
        if not (hasattr(model, "denoiser") and hasattr(model, "shape")):
            raise InputError(
                f"Sampler {self.name!r} builds from a diffmem.model.Model, not a "
                f"{type(model).__name__}: wrap a plain denoiser D(x (B, *S), sigma (B,)) as "
                "Model.from_denoiser(D, shape=S, sigma_range=(0.002, 80.0)), or sample it in one "
                "call "
                f"with diffmem.sample(D, seeds, shape=S, sampler={self.name!r})."
            )
        return self.builder(model, **self.resolve(model, **settings))

    def resolve(self, model, **given) -> dict:
        """The full settings: `given` (None = default), then the defaults (evaluated on the
        model)."""
        unknown = sorted(k for k, v in given.items() if k not in self.settings and v is not None)
        if unknown:
            raise InputError(
                f"Sampler {self.name!r} has no setting(s) {unknown}; its settings: "
                f"{sorted(self.settings)}."
            )
        out = {}
        for key, default in self.settings.items():
            value = given.get(key)
            if value is None:
                value = default(model) if callable(default) else default
            out[key] = value
        return out


SAMPLERS: dict[str, Sampler] = {}  # name -> Sampler; add one with @register below


def register(name: str, settings: dict | None = None, *, needs_sde: bool = False):
    """Decorator adding `build(model, **settings) -> run(seeds)` to `SAMPLERS` under `name` (the
    first line of its docstring is the help text)."""
    def add(build: Callable) -> Callable:
        doc = (build.__doc__ or "").strip().splitlines()
        SAMPLERS[name] = Sampler(
            name, build, dict(settings or {}), needs_sde, doc[0] if doc else ""
        )
        return build
    return add


def get_sampler(name: str, model=None) -> Sampler:
    """The registered sampler `name`, checked against what `model` provides; errors list the valid
    names."""
    if name not in SAMPLERS:
        raise InputError(f"Unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}.")
    spec = SAMPLERS[name]
    if model is not None and spec.needs_sde and (model.sde is None or model.time_score is None):
        valid = sorted(n for n, s in SAMPLERS.items() if not s.needs_sde)
        raise InputError(
            f"Sampler {name!r} integrates an SDE, which this model ({model.kind}, K = {model.k}) "
            f"does "
            f"not have; choose one of {valid}."
        )
    return spec


def sampler_help() -> str:
    """One line per registered sampler, for CLI help."""
    return "; ".join(f"{n}: {s.doc}" for n, s in sorted(SAMPLERS.items()))


def _clip(model, x):
    return x if model.data_range is None else jnp.clip(x, *model.data_range)


@register("em", dict(num_steps=1000, eps=lambda m: float(m.sde.t_min)), needs_sde=True)
def _em(model, *, num_steps, eps):
    """the tutorial's Euler-Maruyama on the reverse SDE (toy models)"""
    def run(seeds):
        x = tutorial_init(seeds, model.shape[0], model.sde)
        # Score functions broadcast a shared t (a toy network computes its time branch once per
        # step).
        return euler_maruyama(
            model.time_score, model.sde, x, seeds, num_steps=num_steps, eps=eps, shared_time=True
        )

    return run


@register("ode", dict(eps=lambda m: float(m.sde.t_min)), needs_sde=True)
def _ode(model, *, eps):
    """the probability-flow ODE (diffrax Tsit5, adaptive) from t_max to eps (toy models)"""
    def run(seeds):
        return probability_flow_ode(
            model.time_score, model.sde, tutorial_init(seeds, model.shape[0], model.sde), t1=eps
        )
    return run


_DDPM_GRID = dict(timesteps=1000, beta_start=1e-4, beta_end=0.02)


@register("ddpm_ancestral", dict(_DDPM_GRID))
def _ddpm(model, *, timesteps, beta_start, beta_end):
    """Ho et al.'s ancestral sampler on the `timesteps` DDPM steps (x0 clipped, as Pham et al.)"""
    def run(seeds):
        x = ddpm_ancestral(model.denoiser, initial_noise(seeds, model.shape), seeds,
                           num_steps=timesteps, beta_start=beta_start, beta_end=beta_end)
        return _clip(model, x)
    return run


@register("ddim", dict(num_steps=50, eta=0.0, **_DDPM_GRID))
def _ddim(model, *, num_steps, eta, timesteps, beta_start, beta_end):
    """DDIM on num_steps (50) of the DDPM steps, eta (0 = deterministic)"""
    def run(seeds):
        x = ddim(model.denoiser, initial_noise(seeds, model.shape), seeds if eta > 0 else None,
                 num_steps=num_steps, eta=eta, T=timesteps, beta_start=beta_start,
                 beta_end=beta_end)
        return _clip(model, x)
    return run


_EDM_SETTINGS = dict(num_steps=18, sigma_min=lambda m: max(float(m.sigma_min), 0.002),
                     sigma_max=lambda m: min(float(m.sigma_max), 80.0))


def _edm_run(model, heun, num_steps, sigma_min, sigma_max):
    fn = edm_heun if heun else edm_euler

    def run(seeds):
        x = fn(model.denoiser, initial_noise(seeds, model.shape, std=sigma_max),
               num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max)
        return _clip(model, x)
    return run


@register("edm_euler", dict(_EDM_SETTINGS))
def _edm_euler(model, *, num_steps, sigma_min, sigma_max):
    """Karras et al.'s Algorithm 1 without the 2nd-order step (Euler), num_steps (18), rho 7"""
    return _edm_run(model, False, num_steps, sigma_min, sigma_max)


@register("edm_heun", dict(_EDM_SETTINGS))
def _edm_heun(model, *, num_steps, sigma_min, sigma_max):
    """Karras et al.'s Algorithm 1 (Heun), num_steps (18, 35 evaluations), rho 7"""
    return _edm_run(model, True, num_steps, sigma_min, sigma_max)


# ----------------------------------------------------------- Kadkhodaie & Simoncelli (blind ascent)
# The algorithm is `diffmem.ks_sampler`; its per-sample record and registry entry follow.
class SampleInfo(NamedTuple):
    """Per-sample diagnostics a registered sampler reports beside its samples, attached to its
    run function as `run.info` (only the KS sampler has one). `sample_sharded` returns one array
    per seed, so they travel packed: `packed(seeds (B,)) -> (B, prod(S) + len(fields))` float32
    (the flattened samples, the same values as `run(seeds)`, then one column per field);
    `unpack(packed) -> (samples (B, *S), {field: (B,)})`. fields: (name, numpy dtype name) pairs;
    values must be exact in float32 (integers below 2**24)."""
    packed: Callable
    unpack: Callable
    fields: tuple


KS_INFO_FIELDS = (("converged", "bool"), ("iterations", "int32"))


def not_converged_message(converged, max_iters: int, what: str = "", iterations=None) -> str | None:
    """One line: how many samples did not reach sigma_L, naming the cap and the key to raise (None
    if all converged). With `iterations`, those that stopped early (sigma above 2) are counted."""
    converged = np.asarray(converged, bool)
    bad = int(np.sum(~converged))
    if not bad:
        return None
    early = ""
    if iterations is not None:
        diverged = int(np.sum(~converged & (np.asarray(iterations) < int(max_iters))))
        early = f", {diverged} of them stopped early as sigma exceeded 2" if diverged else ""
    return (f"{what + ': ' if what else ''}{bad} of {converged.size} samples did not converge "
            f"within max_iters={int(max_iters)} (sigma estimate still above sigma_L{early}); raise "
            "the cap with --config.sample.max_iters=... (configs/kadkhodaie.py: max_iters=...).")


@register("ks", dict(h0=0.01, beta=0.01, sigma_L=0.01, init_mean=0.0, max_iters=3000))
def _ks(model, *, h0, beta, sigma_L, init_mean, max_iters):
    """Kadkhodaie & Simoncelli's blind ascent, [0, 1] units (h0, beta, sigma_L 0.01; max_iters 3000)

    Sample shards record each sample's `converged` (sigma reached sigma_L) and `iterations`
    (`run.info`)."""
    if not 0 < int(max_iters) < 2**24:
        raise InputError(f"max_iters must lie in [1, 2**24); got {max_iters}.")

    def d01(y, sigma):  # the model's [-1, 1] denoiser seen in [0, 1] units (sigma doubles)
        return (model.denoiser(2.0 * y - 1.0, 2.0 * sigma) + 1.0) / 2.0

    def sample(seeds):
        r = kadkhodaie_simoncelli(d01, model.shape, seeds, h0=h0, beta=beta, sigma_L=sigma_L,
                                  init_mean=init_mean, max_iters=max_iters)
        return _clip(model, 2.0 * r.samples - 1.0), r

    def run(seeds):
        return sample(seeds)[0]

    def packed(seeds):
        x, r = sample(seeds)
        cols = [x.reshape(x.shape[0], -1)] + [getattr(r, name)[:, None].astype(x.dtype)
                                              for name, _ in KS_INFO_FIELDS]
        return jnp.concatenate(cols, axis=1)

    def unpack(p):
        p = np.asarray(p)
        n = math.prod(model.shape)
        x = p[:, :n].reshape((len(p),) + tuple(model.shape))
        return x, {name: p[:, n + j].astype(dtype)
                   for j, (name, dtype) in enumerate(KS_INFO_FIELDS)}

    run.info = SampleInfo(packed, unpack, KS_INFO_FIELDS)
    return run
