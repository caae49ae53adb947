"""Sample the models of a workdir: `samples/<K>.npz` (+ a picture) for every model, found by K.

    paths = sample_workdir("runs/c9", seeds=range(1500), sampler="em")                 # 2-D toy models
    paths = sample_workdir("runs/digits", seeds=range(50_000), sampler="ddpm", batch=512)  # image models
    paths = sample_workdir("runs/digits", seeds=range(256), model="optimal")           # empirical optimum

Sample i depends only on its integer seed, so any split of a seed range (batches, devices, hosts, jobs)
gives the same samples. Batches run sharded over every device (`sampling.sample_sharded`) and are saved as
they finish under `samples/<K>.partial/`, so an interrupted run resumes where it stopped. A finished file
with the same seeds and settings is skipped; one that differs is never overwritten silently (pass
overwrite=True). Files:
  samples/<K>.npz             trained model's EMA weights, latest checkpoint
  samples/<K>@<step>.npz      an earlier checkpoint (`step=`), for maxima over snapshots
  samples/optimal/<K>.npz     the empirical optimal denoiser of model K's training set (step = -1)
each holding `samples` (N, *S) float32 (images in [-1, 1]), `seeds` (N,) int64, `step`, `sampler` and the
sampler settings.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from diffmem import builders, checkpoint, configlib, energy, report, sampling, train, viz

IMAGE_SAMPLERS = ("ddpm", "ddim", "edm_euler", "edm_heun")
TOY_SAMPLERS = ("em", "ode")
MODELS = ("trained", "optimal")
_RUNS: dict = {}  # see sample_workdir


def load_config(workdir: str):
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a diffmem workdir (train into it first).")
    with open(path) as f:
        return configlib.from_json(f.read())


def load_ema_params(workdir: str, config, spec: builders.ModelSpec, model, step: int | None = None):
    """EMA parameters and checkpoint step of one sweep member (latest checkpoint unless `step`)."""
    optimizer = train.optimizer_from_config(config)
    like = jax.eval_shape(lambda: train.init_state(model, optimizer, spec).as_dict())  # shapes only
    tree, step = checkpoint.restore_latest(workdir, spec.name, like, step)
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


# ------------------------------------------------------------------------------------ seeds -> samples
def toy_sampler(config, score_fn, sampler: str, num_steps: int | None, eps: float | None = None):
    """`seeds (B,) -> samples (B, d)` for the low-dimensional (MLP) models, from a batched score s(x, t)."""
    if sampler not in TOY_SAMPLERS:
        raise ValueError(f"Sampler {sampler!r} is not available for toy models; choose one of {TOY_SAMPLERS}.")
    sde = builders.build_sde(config)
    dim = config.data.get("dim", 2)
    steps = num_steps or config.sample.num_steps
    eps = eps or config.sample.get("eps", sde.t_min)

    def run(seeds):
        x_init = sampling.tutorial_init(seeds, dim, sde)
        if sampler == "em":
            # The toy networks broadcast a shared t (time branch once per step, not once per sample).
            return sampling.euler_maruyama(score_fn, sde, x_init, seeds, num_steps=steps, eps=eps,
                                           shared_time=True)
        return sampling.probability_flow_ode(score_fn, sde, x_init, t1=eps)

    return run


def image_sampler(denoiser, shape: tuple[int, ...], sampler: str, *, num_steps: int | None = None,
                  eta: float = 0.0, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                  sigma_min: float = 0.002, sigma_max: float = 80.0) -> Callable[[jax.Array], jax.Array]:
    """`seeds (B,) -> images (B, *shape)` in [-1, 1] for any denoiser D(x, sigma).

    ddpm: Ho et al.'s ancestral sampler over `timesteps` steps (x0 clipped, as Pham et al.);
    ddim: DDIM over `num_steps` (default 50) of those steps with `eta`; edm_euler / edm_heun: Karras et al.
    Algorithm 1 with `num_steps` (default 18) on sigma_min..sigma_max, rho 7. The start is
    N(0, I) (ddpm, ddim) or N(0, sigma_max^2 I) (EDM), drawn from each sample's own seed.
    """
    if sampler not in IMAGE_SAMPLERS:
        raise ValueError(f"Unknown image sampler {sampler!r}; choose one of {IMAGE_SAMPLERS}.")
    betas = dict(beta_start=beta_start, beta_end=beta_end)

    def run(seeds):
        if sampler == "ddpm":
            x = sampling.ddpm_ancestral(denoiser, sampling.initial_noise(seeds, shape), seeds,
                                        num_steps=timesteps, **betas)
        elif sampler == "ddim":
            x = sampling.ddim(denoiser, sampling.initial_noise(seeds, shape), seeds if eta > 0 else None,
                              num_steps=num_steps or 50, eta=eta, T=timesteps, **betas)
        else:
            heun = sampler == "edm_heun"
            fn = sampling.edm_heun if heun else sampling.edm_euler
            x = fn(denoiser, sampling.initial_noise(seeds, shape, std=sigma_max), num_steps=num_steps or 18,
                   sigma_min=sigma_min, sigma_max=sigma_max)
        return jnp.clip(x, -1.0, 1.0)

    return run


def _image_settings(config, sampler: str, num_steps: int | None, eta: float) -> dict:
    d = config.get("diffusion", {})
    settings = dict(timesteps=int(d.get("timesteps", 1000)), beta_start=float(d.get("beta_start", 1e-4)),
                    beta_end=float(d.get("beta_end", 0.02)), num_steps=num_steps, eta=float(eta))
    if sampler.startswith("edm"):
        lo, hi = builders.sigma_range(config)
        settings.update(sigma_min=float(max(lo, 0.002)), sigma_max=float(min(hi, 80.0)))
    return settings


# ------------------------------------------------------------------------------------ the workdir driver
def sample_workdir(workdir: str, seeds: Sequence[int], sampler: str | None = None, *,
                   names: Sequence[str] | None = None, model: str = "trained", step: int | None = None,
                   num_steps: int | None = None, eps: float | None = None, eta: float = 0.0,
                   overwrite: bool = False, batch: int | None = None, mesh=None,
                   progress: bool = True) -> list[str]:
    """Sample every model of `workdir` (or the given names) with per-sample `seeds`; returns the .npz paths.

    sampler: em | ode for toy models, ddpm | ddim | edm_euler | edm_heun for image models (default: the
    config's sample.sampler). model: 'trained' (EMA weights) or 'optimal' (the empirical optimal denoiser
    of each model's training set, image models). step: a checkpoint step other than the latest.
    batch: seeds per sharded call (rounded up to a multiple of the device count).
    """
    if model not in MODELS:
        raise ValueError(f"Unknown model {model!r}; choose one of {MODELS}.")
    config = load_config(workdir)
    image = builders.is_image(config)
    sampler = sampler or config.sample.sampler
    valid = IMAGE_SAMPLERS if image else TOY_SAMPLERS
    if sampler not in valid:
        raise ValueError(f"Sampler {sampler!r} does not apply to this workdir's {'image' if image else 'toy'} "
                         f"models; choose one of {valid}.")
    if model == "optimal" and not image:
        raise ValueError("model='optimal' samples image workdirs; for the 2-D study the empirical twin is part "
                         "of `bin/toy.py`.")
    if model == "optimal" and step is not None:
        raise ValueError("The optimal denoiser has no checkpoints: drop step.")
    specs = {s.name: s for s in builders.model_specs(config)}
    wanted = list(specs) if names is None else [str(n) for n in names]
    unknown = [n for n in wanted if n not in specs]
    if unknown:
        raise ValueError(f"No model named {unknown} in {workdir}; its models are "
                         f"{sorted(specs, key=checkpoint.sort_key)}.")
    seeds = np.asarray(seeds, np.int64)
    mesh = mesh or train.data_mesh()
    batch = batch or int(config.sample.get("batch", 4096 if not image else 256))
    paths = []
    for name in sorted(wanted, key=checkpoint.sort_key):
        spec = specs[name]
        shape = spec.data.shape[1:]
        if model == "optimal":
            path, ckpt_step = os.path.join(workdir, "samples", "optimal", f"{name}.npz"), -1
            denoiser = energy.empirical_denoiser(jnp.asarray(spec.data), chunk=4096)
        else:
            net = builders.build_model(config, shape)
            params, ckpt_step = load_ema_params(workdir, config, spec, net, step)
            suffix = "" if step is None else f"@{ckpt_step}"
            path = os.path.join(workdir, "samples", f"{name}{suffix}.npz")
        meta = dict(step=np.int64(ckpt_step), sampler=np.str_(sampler), model=np.str_(model))
        if image:
            settings = _image_settings(config, sampler, num_steps, eta)
            meta.update({k: np.float64(-1 if v is None else v) for k, v in settings.items()})
            # One sampler object per (model, checkpoint, settings) in this process, so a repeated call
            # reuses its compilation (`sampling.sample_sharded` caches by function).
            key = (os.path.abspath(workdir), name, model, int(ckpt_step),
                   tuple((k, str(v)) for k, v in sorted(meta.items())))
            run = _RUNS.get(key)
            if run is None:
                if model == "trained":
                    denoiser = builders.denoiser(config, net, params)
                run = _RUNS[key] = image_sampler(denoiser, shape, sampler, **settings)
                while len(_RUNS) > 8:
                    _RUNS.pop(next(iter(_RUNS)))
        else:
            eps = eps or config.sample.get("eps", None)
            run = toy_sampler(config, builders.score_fn(config, net, params), sampler, num_steps, eps)
            meta.update(eps=np.float64(eps or -1), num_steps=np.int64(num_steps or config.sample.num_steps))
        with train.matmul_precision(config):
            samples = _sample_resumable(path, run, seeds, meta, batch=batch, mesh=mesh, overwrite=overwrite,
                                        desc=f"K={spec.k} {model} {sampler}", progress=progress)
        if samples is not None:
            title = f"K = {spec.k}, {model}, {sampler}, step {ckpt_step}"
            if image:
                viz.image_grid(path[:-4] + ".png", samples[:64], ncols=8, title=title)
            elif samples.shape[1] == 2:
                viz.scatter_samples(path[:-4] + ".png", samples, spec.data, title=title)
        paths.append(path)
    return paths


def _same(old: dict, seeds: np.ndarray, meta: dict) -> bool:
    return np.array_equal(old["seeds"], seeds) and all(
        k in old and np.array_equal(np.asarray(old[k]), np.asarray(v)) for k, v in meta.items())


def _describe(old: dict, meta: dict) -> str:
    diffs = [f"{k} {old[k]} vs {v}" for k, v in meta.items() if k in old and not np.array_equal(old[k], v)]
    return ", ".join(diffs) or f"{len(old['seeds'])} other seeds"


def _sample_resumable(path: str, run, seeds: np.ndarray, meta: dict, *, batch: int, mesh, overwrite: bool,
                      desc: str, progress: bool, options: dict | None = None) -> np.ndarray | None:
    """Run `run` over `seeds` in sharded batches, saving each batch under `<path>.partial/`; returns the samples,
    or None when `path` already holds exactly these (skipped). options: `jax.jit` compiler options."""
    if os.path.exists(path):
        old = report.read_npz(path)
        if _same(old, seeds, meta):
            return None
        if not overwrite:
            raise FileExistsError(f"{path} holds other samples ({_describe(old, meta)}); pass --overwrite to "
                                  "replace it, or choose another --workdir.")
    partial = path[:-4] + ".partial"
    ndev = mesh.devices.size
    batch = -(-max(1, batch) // ndev) * ndev
    starts = range(0, len(seeds), batch)
    chunks, done_rows, t0 = [], 0, time.perf_counter()
    bar = tqdm(total=len(seeds), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    for start in starts:
        part_seeds = seeds[start:start + batch]
        part = os.path.join(partial, f"{start:010d}.npz")
        if os.path.exists(part):
            old = report.read_npz(part)
            if _same(old, part_seeds, meta):  # finished by an earlier, interrupted run
                chunks.append(old["samples"])
                bar.update(len(part_seeds))
                continue
        x = np.asarray(sampling.sample_sharded(run, part_seeds, mesh, compiler_options=options), np.float32)
        if not np.all(np.isfinite(x)):
            raise FloatingPointError(f"Non-finite samples for seeds {part_seeds[0]}..{part_seeds[-1]} ({desc}): "
                                     "the model or sampler diverged; check the checkpoint and the sampler settings.")
        report.write_npz(part, samples=x, seeds=part_seeds, **meta)
        chunks.append(x)
        done_rows += len(part_seeds)
        bar.update(len(part_seeds))
        bar.set_postfix(img_per_s=f"{done_rows / (time.perf_counter() - t0):.1f}")
    bar.close()
    samples = np.concatenate(chunks)
    report.write_npz(path, samples=samples, seeds=seeds, **meta)
    shutil.rmtree(partial, ignore_errors=True)
    return samples
