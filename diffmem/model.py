"""The one model record every sampler, metric and study takes: `Model`.

    model = Model.from_denoiser(D, shape=(2,), sigma_range=(0.002, 80.0))  # a batched D(x, sigma)
    model = Model.from_time_score(s, sde, shape=(2,))                      # a score in SDE time

A workdir's models (`diffmem.workdir.Workdir.model`, `optimal_model`) and the machines
(`diffmem.machines.machine_model`) are built by these two constructors. The record holds functions
and arrays, never a config: what a stage needs from the config is passed to it explicitly.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from diffmem import sde as sde_lib

__all__ = ["Model", "sde_sigma_range"]


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class Model:
    """A model in the form every sampler, metric and study takes (frozen; hashed by identity, and a
    single leaf of a pytree, so it can be a static argument of `jax.jit`).

    denoiser  D(x (B, *S), sigma (B,)) -> (B, *S), EDM's unscaled view
    score     s(x (B, *S), sigma (B,)) = (D(x, sigma) - x) / sigma^2, the score of the noised data
              at sigma (`sde.score_from_denoiser(denoiser)`)
    shape     one example's shape S; train_data (K, *S) float32 (images in [-1, 1]) or None
    sde       the noise process of toy (SDE-trained) models, else None; time_score is then the
              network's score in that process's time, s(x (B, *S), t (B,) or (1,) shared), what SDE
              samplers use
    sigma_min, sigma_max   the noise range a sampler should cover
    name, k   the model's name ("64", "64_s1") and training-set size K
    step      checkpoint step (-1 for the optimal denoiser, machines and plain denoisers)
    kind      "trained" | "optimal" | a machine's name | "denoiser" (`from_denoiser`'s default)
    seed      the member's seed; labels (K,) class labels of the training set, or None
    data_range  (lo, hi) samples are clipped to (images: (-1, 1)), or None
    compiler_options  XLA options for a `jax.jit` of a program that runs this model, or None (XLA's
              defaults; machines on AVX-512 CPUs ask for 512-bit vectors,
              `machines.patch_kernel.compiler_options`)
    """
    denoiser: Callable
    score: Callable
    shape: tuple
    sigma_min: float
    sigma_max: float
    name: str = "model"
    k: int = 0
    kind: str = "denoiser"
    sde: Any = None
    train_data: np.ndarray | None = None
    step: int = -1
    seed: int = 0
    labels: np.ndarray | None = None
    time_score: Callable | None = None
    data_range: tuple | None = None
    compiler_options: dict | None = None

    def __repr__(self) -> str:
        data = ("None" if self.train_data is None
                else f"{np.asarray(self.train_data).dtype}{tuple(np.shape(self.train_data))}")
        sde = "None" if self.sde is None else type(self.sde).__name__
        return (f"Model(name={self.name!r}, k={self.k}, kind={self.kind!r}, step={self.step}, "
                f"shape={self.shape}, sigma=[{self.sigma_min:g}, {self.sigma_max:g}], sde={sde}, "
                f"data_range={self.data_range}, train_data={data}, seed={self.seed})")

    @classmethod
    def from_denoiser(cls, denoiser: Callable, *, shape, sigma_range: tuple | None = None,
                      data_range: tuple | None = None, sde: Any = None, **fields) -> "Model":
        """The model of a plain batched denoiser D(x (B, *S), sigma (B,)) -> (B, *S) over sigma in
        `sigma_range` = (lo, hi). Its score is `sde.score_from_denoiser(D)`. With `sde` (a model
        trained in that noise process's time) its time_score is `sde.score_from_denoiser(D, sde)`
        unless given, and sigma_range defaults to the process's. Other fields (name, k, kind,
        train_data, step, seed, labels, compiler_options) as the class; k defaults to
        len(train_data)."""
        if sde is not None and fields.get("time_score") is None:
            fields["time_score"] = sde_lib.score_from_denoiser(denoiser, sde)
        if sigma_range is None:
            if sde is None:
                raise ValueError("Model.from_denoiser needs sigma_range=(lo, hi) (or an sde).")
            sigma_range = sde_sigma_range(sde)
        lo, hi = sigma_range
        if fields.get("train_data") is not None and "k" not in fields:
            fields["k"] = len(fields["train_data"])
        return cls(denoiser=denoiser, score=sde_lib.score_from_denoiser(denoiser),
                   shape=tuple(int(n) for n in shape), sigma_min=float(lo), sigma_max=float(hi),
                   sde=sde, data_range=data_range, **fields)

    @classmethod
    def from_time_score(cls, time_score: Callable, sde: Any, *, shape,
                        sigma_range: tuple | None = None, data_range: tuple | None = None,
                        **fields) -> "Model":
        """The model of a score in SDE time, s(x (B, *S), t (B,)) = grad log p_t(x), of the noise
        process `sde` (`diffmem.sde`): its denoiser by Tweedie's formula
        (`sde.denoiser_from_score`), its sigma range the process's over [t_min, t_max] unless given.
        Other fields as `from_denoiser`."""
        return cls.from_denoiser(sde_lib.denoiser_from_score(time_score, sde), shape=shape,
                                 sigma_range=sigma_range, data_range=data_range, sde=sde,
                                 time_score=time_score, **fields)


def sde_sigma_range(sde) -> tuple[float, float]:
    """(sigma(t_min), sigma(t_max)) of a noise process, as Python floats (float32 evaluation)."""
    return tuple(float(sde.sigma(jnp.asarray(t, jnp.float32))) for t in (sde.t_min, sde.t_max))
