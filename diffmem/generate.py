"""Sample the trained models of a workdir: `samples/<K>.npz` (+ a picture) for every model, found by K.

    paths = sample_workdir("runs/c9", seeds=range(1500), sampler="em")

Sample i depends only on its integer seed, so any split of a seed range gives the same samples. A finished
file with the same seeds, sampler and checkpoint step is skipped; one that differs is never overwritten
silently (pass overwrite=True).
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import builders, checkpoint, configlib, report, sampling, train, viz


def load_config(workdir: str):
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a diffmem workdir (train into it first).")
    with open(path) as f:
        return configlib.from_json(f.read())


def load_ema_params(workdir: str, config, spec: builders.ModelSpec, model):
    """EMA parameters and checkpoint step of one sweep member."""
    o = config.optim
    like = train.init_state(model, train.make_optimizer(o.lr, o.b1, o.b2, o.eps, o.grad_clip,
                                                        o.get("warmup_steps", 0)), spec).as_dict()
    tree, step = checkpoint.restore_latest(workdir, spec.name, like)
    return tree["ema_params"], step


def parse_seeds(text: str) -> np.ndarray:
    """'0-49999' (inclusive range), '0,5,7' or a mix like '0-9,100-109' -> int64 array."""
    out = []
    for part in filter(None, text.split(",")):
        if "-" in part:
            lo, hi = (int(v) for v in part.split("-"))
            if hi < lo:
                raise ValueError(f"Seed range {part!r} is empty: write LOW-HIGH with LOW <= HIGH.")
            out.extend(range(lo, hi + 1))
        else:
            out.append(int(part))
    if not out:
        raise ValueError(f"No seeds in {text!r}: use e.g. 0-1499.")
    return np.asarray(out, np.int64)


def toy_sampler(config, model, params, sampler: str, num_steps: int | None, eps: float | None = None):
    """A jitted `seeds (B,) -> samples (B, d)` for the low-dimensional (MLP) models."""
    sde = builders.build_sde(config)
    score_fn = builders.score_fn(config, model, params)
    dim = config.data.get("dim", 2)
    steps = num_steps or config.sample.num_steps
    eps = eps or config.sample.get("eps", sde.t_min)

    @jax.jit
    def run(seeds):
        x_init = sampling.tutorial_init(seeds, dim, sde)
        if sampler == "em":
            return sampling.euler_maruyama(score_fn, sde, x_init, seeds, num_steps=steps, eps=eps)
        if sampler == "ode":
            return sampling.probability_flow_ode(score_fn, sde, x_init, t1=eps)
        raise ValueError(f"Sampler {sampler!r} is not available for toy models; choose 'em' or 'ode'.")

    return run


def sample_workdir(workdir: str, seeds: Sequence[int], sampler: str = "em", *, names: Sequence[str] | None = None,
                   num_steps: int | None = None, eps: float | None = None, overwrite: bool = False,
                   batch: int = 4096) -> list[str]:
    """Sample every model of `workdir` (or the given names) with per-sample `seeds`; returns the .npz paths."""
    config = load_config(workdir)
    specs = {s.name: s for s in builders.model_specs(config)}
    wanted = list(specs) if names is None else [str(n) for n in names]
    unknown = [n for n in wanted if n not in specs]
    if unknown:
        raise ValueError(f"No model named {unknown} in {workdir}; its models are {sorted(specs, key=checkpoint.sort_key)}.")
    seeds = np.asarray(seeds, np.int64)
    paths = []
    for name in sorted(wanted, key=checkpoint.sort_key):
        spec = specs[name]
        model = builders.build_model(config, spec.data.shape[1:])
        params, step = load_ema_params(workdir, config, spec, model)
        path = os.path.join(workdir, "samples", f"{name}.npz")
        if os.path.exists(path) and not overwrite:
            old = report.read_npz(path)
            if (np.array_equal(old["seeds"], seeds) and int(old["step"]) == step
                    and str(old["sampler"]) == sampler and float(old["eps"]) == float(eps or -1)):
                paths.append(path)
                continue
            raise FileExistsError(f"{path} holds other samples (step {int(old['step'])}, sampler "
                                  f"{old['sampler']}, {len(old['seeds'])} seeds); pass --overwrite to replace it.")
        run = toy_sampler(config, model, params, sampler, num_steps, eps)
        chunks = [np.asarray(run(jnp.asarray(seeds[i:i + batch], jnp.uint32))) for i in range(0, len(seeds), batch)]
        samples = np.concatenate(chunks).astype(np.float32)
        report.write_npz(path, samples=samples, seeds=seeds, step=np.int64(step), sampler=np.str_(sampler),
                         eps=np.float64(eps or -1))
        if samples.shape[1] == 2:
            viz.scatter_samples(path[:-4] + ".png", samples, spec.data, title=f"K = {spec.k}, {sampler}, step {step}")
        paths.append(path)
    return paths
