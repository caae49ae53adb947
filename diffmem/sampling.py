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

import jax.numpy as jnp
import numpy as np

from diffmem.errors import InputError
from diffmem.ks_sampler import KSResult, kadkhodaie_simoncelli, ks_recursion_iterations  # noqa: F401
from diffmem.sample_noise import initial_noise, per_sample_keys, step_noise, tutorial_init  # noqa: F401
from diffmem.sampler_algorithms import (  # noqa: F401 (re-exported)
    DDIM_SPACINGS, ddim, ddim_invert, ddim_timesteps, ddpm_ancestral, edm_euler, edm_heun,
    euler_maruyama, probability_flow_ode)
from diffmem.sharded import SAMPLE_BLOCK, sample_sharded, seed_slots  # noqa: F401 (re-exported)
from diffmem.solver_steps import ddim_step, edm_slope, edm_step, em_step  # noqa: F401 (re-exported)

__all__ = ["per_sample_keys", "initial_noise", "step_noise", "tutorial_init", "euler_maruyama",
           "probability_flow_ode", "ddpm_ancestral", "DDIM_SPACINGS", "ddim_timesteps", "ddim",
           "ddim_invert", "edm_euler", "edm_heun", "SAMPLE_BLOCK", "seed_slots", "sample_sharded",
           "Sampler", "SAMPLERS", "register", "get_sampler", "sampler_help", "KSResult",
           "kadkhodaie_simoncelli", "ks_recursion_iterations", "SampleInfo", "KS_INFO_FIELDS",
           "not_converged_message", "ddim_step", "em_step", "edm_step", "edm_slope"]


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
