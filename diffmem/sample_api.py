"""`sample`: samples of a model or of a plain denoiser in one call, as bin/sample.py draws them.

    x = sample(D, range(16), shape=(2,))                        # a batched D(x, sigma), EDM's Heun
    x = sample(D, "0-99", shape=(8, 8, 1), sampler="edm_euler", num_steps=40)
    # bin/sample.py's
    x = sample(wd.model("9"), range(1500), sampler="em", experiment=wd.experiment)

The settings are resolved by `experiment.SamplerChoice.settings`, the resolver of bin/sample.py
(keyword settings, then the experiment's sampler choice, from its config's `sample` and `diffusion`
sections, when `experiment` is given, then the sampler's defaults), and the samples are drawn by
`sampling.sample_sharded` over every device, so sample i is bit for bit the one the workdir path
(`generate.sample_workdir`) writes for seed i. `diffmem.sampling` holds the algorithms and the
registry; this module, above it, is the public `diffmem.sample`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from diffmem import devices, multihost, sampling
from diffmem.errors import InputError
from diffmem.experiment import Experiment, SamplerChoice
from diffmem.model import Model
from diffmem.seeds import parse_seeds

__all__ = ["EDM_SIGMA_RANGE", "as_model", "sample"]

EDM_SIGMA_RANGE = (0.002, 80.0)  # the sigma range of a plain denoiser unless given (Karras et al.)


def as_model(model_or_denoiser: Model | Callable, *, shape=None, sigma_range=None,
             data_range=None) -> Model:
    """`model_or_denoiser` as a `Model`: a Model as it is, a plain batched denoiser
    D(x (B, *S), sigma (B,)) -> (B, *S) through `Model.from_denoiser` with one example's `shape` S
    (required) and `sigma_range` (default EDM's (0.002, 80))."""
    if isinstance(model_or_denoiser, Model):
        given = [k for k, v in dict(shape=shape, sigma_range=sigma_range,
                                     data_range=data_range).items() if v is not None]
        if given:
            raise InputError(f"{given} describe a plain denoiser; a Model already has them "
                             "(use dataclasses.replace(model, ...) to change one).")
        return model_or_denoiser
    if not callable(model_or_denoiser):
        raise InputError("Expected a diffmem.Model or a batched denoiser D(x (B, *S), sigma (B,)); "
                         f"got {type(model_or_denoiser).__name__}.")
    if shape is None:
        raise InputError("A plain denoiser D(x (B, *S), sigma (B,)) needs shape=S, one example's "
                         "shape (e.g. shape=(2,) or shape=(8, 8, 1)).")
    return Model.from_denoiser(model_or_denoiser, shape=tuple(np.atleast_1d(shape)),
                               sigma_range=sigma_range or EDM_SIGMA_RANGE, data_range=data_range)


def _seeds(seeds) -> np.ndarray:
    if isinstance(seeds, str):
        return parse_seeds(seeds)
    out = np.asarray(list(seeds) if isinstance(seeds, range) else seeds)
    if out.ndim == 0:
        out = out.reshape(1)
    if out.ndim != 1 or out.size == 0 or not np.issubdtype(out.dtype, np.integer):
        raise InputError(f"Expected seeds as a non-empty 1-D integer array, a range or a string "
                         f"like '0-99'; got {out.dtype} {out.shape}.")
    if len(np.unique(out)) != len(out):
        raise InputError("Seeds must not repeat: sample i depends only on seed i.")
    return out.astype(np.int64)


def default_sampler(model: Model, choice: SamplerChoice | None = None) -> str:
    """The sampler `sample` uses unless told: the experiment's (`SamplerChoice.for_kind`: its
    optimal sampler for the optimal denoiser, as bin/sample.py), else "em" for a model with an SDE,
    else "edm_heun"."""
    if choice is not None and choice.name:
        return choice.for_kind(model.kind)
    return "em" if model.sde is not None and model.time_score is not None else "edm_heun"


def sample(model_or_denoiser: Model | Callable, seeds, sampler: str | None = None, *,
           shape=None, sigma_range=None, data_range=None, experiment: Experiment | None = None,
           mesh=None, **settings) -> np.ndarray:
    """Samples (B, *S) float32 of a Model or a plain batched denoiser, one per seed (sample i
    depends only on seeds[i]).

    seeds: integers (B,), a range, or a string such as '0-99'. sampler: a name of
    `sampling.SAMPLERS` (default `default_sampler`). shape, sigma_range, data_range: for a plain
    denoiser (see `as_model`). experiment: a workdir's experiment (`Workdir.experiment`) whose
    sampler choice and matmul precision apply as they do for bin/sample.py. settings: the sampler's
    settings (num_steps, eps, eta, sigma_min, ...; unknown names are an error listing the valid
    ones). mesh: the device mesh (default every device).
    """
    model = as_model(model_or_denoiser, shape=shape, sigma_range=sigma_range,
                     data_range=data_range)
    seeds = _seeds(seeds)
    choice = experiment.sampler if experiment is not None else SamplerChoice("")
    name = sampler or default_sampler(model, choice)
    resolved = choice.settings(name, model, **settings)
    run = sampling.get_sampler(name, model).build(model, **resolved)
    precision = experiment.training.matmul_precision if experiment is not None else "default"
    with devices.matmul_precision(precision):
        x = sampling.sample_sharded(run, seeds, mesh or devices.data_mesh())
    return np.asarray(multihost.to_host(x)).astype(np.float32)
