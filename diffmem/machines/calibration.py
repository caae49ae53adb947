"""Locality calibration: per noise level, the machine hyperparameter (patch size k, or PSPC-flex's
tau) whose machine is closest to a trained model's denoiser; and network sensitivity heatmaps for
PSPC-flex.

Kamb & Ganguli calibrate "a single time-dependent hyperparameter" on the network's own reverse
trajectory with a cosine score criterion; here (as the brief and PSPC's MSE comparison) the
criterion is the mean squared difference of the two denoisers D(x0 + sigma n, sigma) over noised
images (training or held-out), per sigma, and the reported agreement is the median over images of
the per-image r^2 (`pearson_r`).
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from diffmem import report
from diffmem import workdir as wdlib
from diffmem.errors import InputError
from diffmem.machines import models as mm
from diffmem.machines import schedule as sched

__all__ = ["pearson_r", "default_sigmas", "default_candidates", "noised", "calibrate",
           "network_heatmap", "calibrate_workdir"]


def pearson_r(a, b) -> np.ndarray:
    """(B,) correlation over the pixels of each pair of images a[i], b[i] (mean-removed, unit
    norm; nan where an image is constant)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(a * b, axis=1) / (na * nb)


def default_sigmas(model, num: int = 10) -> np.ndarray:
    """`num` levels log-spaced over the model's sigma range clipped to [0.01, 20] (below, every
    machine is the identity on its training images; above, all give the mean)."""
    lo, hi = max(float(model.sigma_min), 0.01), min(float(model.sigma_max), 20.0)
    return np.geomspace(lo, hi, num)


def default_candidates(machine: str, shape: tuple) -> tuple:
    """Odd patch sizes up to the image (ELS: up to min(H, W)), or PSPC-flex thresholds."""
    if machine == "pspc_flex":
        return (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9, 1.0)
    h, w = shape[:2]
    top = min(h, w) if machine == "els" else max(h, w)
    return tuple(range(1, top + 1, 2)) if machine != "ls" else tuple(range(1, 2 * max(h, w), 2))


def noised(images: np.ndarray, sigma: float, seed: int, index: int) -> np.ndarray:
    """images + sigma n, n drawn from fold_in(key(seed), index) (the same draws for every
    candidate)."""
    n = jax.random.normal(
        jax.random.fold_in(jax.random.key(seed), index), images.shape, jnp.float32
    )
    return np.asarray(images, np.float32) + float(sigma) * np.asarray(n)


def calibrate(model, machine: str = "els", *, candidates: Sequence | None = None,
              sigmas: Sequence[float] | None = None, images: np.ndarray | None = None,
              num_images: int = 16, seed: int = 0, chunk: int | None = None,
              heatmap: Callable | None = None, progress: bool = False) -> dict:
    """Per sigma, the candidate minimising the MSE between `machine` (of model.train_data) and
    model.denoiser.

    images: the clean images to noise (default: the first num_images training images of the model).
    Returns {"schedule": Schedule (sigma -> best), "sigmas" [L], "candidates" [C], "mse" [L][C],
    "best" [L], "r2" [L] (median over images of the per-image r^2 at the best candidate), "r" [L],
    "machine"}.
    """
    if machine in ("ideal", "wiener"):
        raise InputError(
            f"Machine {machine!r} has no locality hyperparameter to calibrate; choose one of "
            f"{[m for m in mm.MACHINES if m not in ('ideal', 'wiener')]}."
        )
    shape = tuple(model.shape)
    candidates = tuple(default_candidates(machine, shape) if candidates is None else candidates)
    sigmas = np.asarray(default_sigmas(model) if sigmas is None else sigmas, np.float64)
    x0 = np.asarray(model.train_data[:num_images] if images is None else images, np.float32)
    if len(x0) == 0 or not candidates or sigmas.size == 0:
        raise InputError("Calibration needs at least one image, one candidate and one sigma.")
    fns = {
        c: mm.machine_denoiser(
            model.train_data, machine, patch_size=c, tau=c, heatmap=heatmap, chunk=chunk
        )
        for c in candidates
    }
    net = jax.jit(model.denoiser)
    mse = np.zeros((len(sigmas), len(candidates)))
    r = np.zeros((len(sigmas), len(candidates), len(x0)))
    for i, s in enumerate(tqdm(sigmas, desc=f"calibrate {machine}", disable=not progress)):
        x = noised(x0, s, seed, i)
        sig = np.full((len(x0),), s, np.float32)
        target = np.asarray(net(jnp.asarray(x), jnp.asarray(sig)), np.float64)
        for j, c in enumerate(candidates):
            out = np.asarray(fns[c](jnp.asarray(x), jnp.asarray(sig)), np.float64)
            mse[i, j] = np.mean((out - target) ** 2)
            r[i, j] = pearson_r(out, target)
    best = mse.argmin(axis=1)
    best_r = r[np.arange(len(sigmas)), best]
    values = tuple(candidates[j] for j in best)
    return dict(machine=machine, schedule=sched.Schedule(tuple(float(s) for s in sigmas), values),
                sigmas=sigmas.tolist(), candidates=list(candidates), mse=mse.tolist(),
                best=list(values), r=np.median(best_r, axis=1).tolist(),
                r2=np.median(best_r**2, axis=1).tolist())


def network_heatmap(model, sigmas: Sequence[float], images: np.ndarray, seed: int = 0) -> Callable:
    """heat(sigma (B,)) -> (B, HW, HW): E |dD(x)_out / dx_in| of model's denoiser over images noised
    at each of `sigmas` (summed over channels; nearest level in log sigma), PSPC-flex's sensitivity
    heatmaps."""
    images = np.asarray(images, np.float32)
    sigmas = sorted(float(s) for s in sigmas)
    _, h, w, c = (1,) + tuple(model.shape) if images.ndim == 3 else images.shape
    p = h * w
    d = model.denoiser

    def jac(x, s):  # (HWC, HWC) for one image
        f = lambda v: d(v.reshape(1, h, w, c), jnp.full((1,), s, v.dtype)).reshape(-1)
        return jax.jacfwd(f)(x.reshape(-1))
    jac = jax.jit(jac)
    table = []
    for i, s in enumerate(sigmas):
        x = noised(images, s, seed, i)
        acc = sum(np.abs(np.asarray(jac(jnp.asarray(xi), float(s)))) for xi in x) / len(x)
        table.append(acc.reshape(p, c, p, c).sum(axis=(1, 3)))
    table = jnp.asarray(np.stack(table), jnp.float32)
    levels = sched.Schedule(tuple(float(s) for s in sigmas), tuple(range(len(sigmas))))

    def heat(sigma):
        idx = jnp.asarray(levels.values)[levels.distinct_index(jnp.asarray(sigma))]
        return table[idx].astype(jnp.asarray(sigma).dtype)
    return heat


def calibrate_workdir(workdir, names: Sequence[str] | None = None, machine: str = "els", *,
                      network: str = "trained", candidates: Sequence | None = None,
                      sigmas: Sequence[float] | None = None, num_images: int = 16, seed: int = 0,
                      chunk: int | None = None, progress: bool = True) -> dict:
    """`calibrate` for each model of a workdir against its network ("trained") or the empirical
    optimum ("optimal"); writes machines/calibration/<name>_<machine>.json (schedule, per-sigma MSE
    and r^2) and returns {name: result}. The schedule JSON is what `machine_model(...,
    patch_size=Schedule.from_dict(...))` takes."""
    wd = workdir if isinstance(workdir, wdlib.Workdir) else wdlib.Workdir(os.fspath(workdir))
    out = {}
    for name in wdlib.sort_names(wd.names() if names is None else [str(n) for n in names]):
        res = calibrate(wd.model(name, kind=network), machine, candidates=candidates, sigmas=sigmas,
                        num_images=num_images, seed=seed, chunk=chunk, progress=progress)
        res = dict(res, schedule=res["schedule"].to_dict(), network=network)
        if wdlib.is_writer():
            path = wd.study_output_dir("machines", "calibration", f"{name}_{machine}.json")
            report.write_json(path, res)
        out[name] = res
    return out
