"""Machines as denoisers of a training set, and as `diffmem.model.Model` records every sampler,
metric and study takes (kind = the machine's name, step -1).

    # D(x (B, H, W, C), sigma (B,))
    D = machine_denoiser(train, "els", patch_size=5)
    # a Model of K = 64's training set
    m = machine_model("runs/digits", "64", "els", patch_size=sched)
    run = sampling.get_sampler("edm_euler", m).build(m, **settings)    # any registered sampler
"""
from __future__ import annotations

import dataclasses

import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffmem import builders
from diffmem import sde as sde_lib
from diffmem import workdir as wdlib
from diffmem.errors import InputError
from diffmem.model import Model
from diffmem.machines import local_score as ls
from diffmem.machines import patch_kernel as pk
from diffmem.machines import schedule as sched
from diffmem.machines import wiener

__all__ = ["MACHINES", "pspc_tau_schedule", "default_patch_schedule", "machine_denoiser",
           "machine_model"]

MACHINES = ("ideal", "ls", "els", "bbels", "pspc_square", "pspc_flex", "wiener")
"""ideal (empirical), local, equivariant local, boundary-broken ELS, PSPC square / flex, Wiener
filter."""

_PATCH_FNS = {"ls": ls.local, "els": ls.equivariant, "bbels": ls.boundary_broken,
              "pspc_square": ls.pspc_square}


def pspc_tau_schedule() -> sched.Schedule:
    """Niedoba et al.'s CIFAR threshold schedule on EDM's 18-step grid (sigma 80 -> 0.002, rho
    7)."""
    taus = (1.0,) * 7 + (0.7, 0.7, 0.5, 0.4, 0.4, 0.4, 0.4, 0.3, 0.3, 0.3, 0.3)
    sigmas = sde_lib.edm_sigma_steps(18)[:-1]
    return sched.Schedule(tuple(float(s) for s in sigmas[::-1]), taus[::-1])


def default_patch_schedule(image_size: int) -> sched.Schedule:
    """Kamb & Ganguli's MNIST UNet scales, rescaled to the image size (`calibration.calibrate`: a
    model's own)."""
    return sched.kamb_schedule("mnist_unet_zeros", image_size=image_size)


def machine_denoiser(train, machine: str = "els", patch_size=None, *, tau=None,
                     heatmap: Callable | None = None, chunk: int | None = None):
    """The machine `machine` of the training set `train` (N, *S) as a jitted D(x (B, *S), sigma
    (B,)).

    patch_size: k, or a schedule sigma -> k (a number, a function, a `schedule.Schedule` or its
    dict) for ls, els, bbels, pspc_square (default: `default_patch_schedule`); tau: the mass
    threshold (or its schedule) of pspc_flex (default `pspc_tau_schedule`), with heatmap(sigma (B,))
    -> (B, HW, HW) (default the Wiener filter's rows). chunk: training images per streamed chunk
    (None: automatic). Compiled once per input shape and dtype, with
    `patch_kernel.compiler_options()`."""
    if machine not in MACHINES:
        raise InputError(f"Unknown machine {machine!r}; choose one of {list(MACHINES)}.")
    if machine == "wiener":
        return _jit(wiener.wiener_denoiser(train))
    data = jnp.asarray(train)
    if machine == "ideal":
        return _bound(
            _jit(lambda y, x, sigma: ls.ideal(y, x, sde_lib.per_sample(sigma, x), chunk)), data
        )
    if data.ndim != 4:
        raise InputError(
            f"Machine {machine!r} works on images (N, H, W, C); this training set has shape "
            f"{tuple(data.shape)}. Use 'ideal' or 'wiener' for other data."
        )
    if machine == "pspc_flex":
        schedule = sched.as_schedule(pspc_tau_schedule() if tau is None else tau)
        heat = heatmap or wiener.wiener_heatmap(np.asarray(train))
        fn = lambda y, t, x, sigma: ls.pspc_flex(y, x, sigma, float(t), heat, chunk)
    else:
        schedule = sched.as_schedule(
            default_patch_schedule(data.shape[1]) if patch_size is None else patch_size
        )
        patch = _PATCH_FNS[machine]
        fn = lambda y, k, x, sigma: patch(y, x, sigma, int(k), chunk)

    def apply(y, x, sigma):
        return sched.by_level(schedule, lambda v, x, s: fn(y, v, x, s))(
            x, sde_lib.per_sample(sigma, x)
        )

    return _bound(_jit(apply), data)


def _jit(fn):
    """fn jitted with `patch_kernel.compiler_options()` where it is called on its own, and plainly
    inside a caller's trace (JAX takes compiler options only on the outermost jit: the caller's own
    options then apply)."""
    options = pk.compiler_options() or None
    top, nested = jax.jit(fn, compiler_options=options), jax.jit(fn)
    return lambda *args: (nested if any(isinstance(a, jax.core.Tracer) for a in args) else top)(
        *args
    )


def _bound(jitted, data):
    """D(x, sigma) = jitted(data, x, sigma): the training set is an argument of the compiled
    function (not a constant folded into it) when D is called on its own; inside a caller's jit it
    is that trace's constant."""
    return lambda x, sigma: jitted(data, x, sigma)


def _experiment_and_spec(config_or_workdir, name):
    if isinstance(config_or_workdir, ml_collections.ConfigDict):
        exp = builders.build(config_or_workdir)
        specs = {s.name: s for s in exp.members}
        if str(name) not in specs:
            raise InputError(
                f"No model named {name!r} in this config; its models are {wdlib.sort_names(specs)}."
            )
        return exp, specs[str(name)]
    wd = config_or_workdir
    if not isinstance(wd, wdlib.Workdir):
        wd = wdlib.Workdir(os.fspath(wd))
    return wd.experiment, wd.spec(str(name))


def machine_model(config_or_workdir, name, machine: str = "els", patch_size=None, *, tau=None,
                  heatmap: Callable | None = None, chunk: int | None = None) -> Model:
    """The machine of model `name`'s training set (a workdir's recorded K-subset, or a config's) as
    a `Model` (kind = machine, step -1); the other arguments as `machine_denoiser`."""
    exp, spec = _experiment_and_spec(config_or_workdir, name)
    denoiser = machine_denoiser(
        spec.data, machine, patch_size, tau=tau, heatmap=heatmap, chunk=chunk
    )
    model = exp.as_model(spec, machine, -1, denoiser=denoiser)
    return dataclasses.replace(model, compiler_options=pk.compiler_options() or None)