"""Per-noise-level hyperparameters of the machines: the patch size k(sigma) (LS, ELS, PSPC-square)
or the mass threshold tau(sigma) (PSPC-flex), as the papers calibrate them, and the dispatch that
runs a machine compiled for each distinct value inside one jitted denoiser.

A schedule is a table (sigma_j, value_j); a query at sigma takes the value of the nearest sigma_j in
log sigma (PSPC's rule: "the nearest grid sigma"). Kamb & Ganguli's published scales are given per
step index of their cosine process; `kamb_schedule` turns them into (sigma, k) pairs in diffmem's VE
view (sigma = b_t / a_t).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffmem.errors import InputError

__all__ = ["Schedule", "as_schedule", "by_level", "KAMB_SCALES", "kamb_sigma", "kamb_schedule"]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """values[j] applies at noise level sigmas[j] (increasing); other sigmas take the nearest in log
    sigma."""
    sigmas: tuple
    values: tuple

    def __post_init__(self):
        if len(self.sigmas) != len(self.values) or not self.sigmas:
            raise InputError(
                f"A schedule needs one value per sigma; got {len(self.sigmas)} sigmas and "
                f"{len(self.values)} values."
            )
        if any(not s > 0 for s in self.sigmas) or list(self.sigmas) != sorted(self.sigmas):
            raise InputError(
                f"Schedule sigmas must be positive and increasing; got {list(self.sigmas)}."
            )

    @classmethod
    def constant(cls, value) -> "Schedule":
        return cls((1.0,), (value,))

    @property
    def distinct(self) -> tuple:
        return tuple(sorted(set(self.values)))

    def __call__(self, sigma: float):
        """The value at one sigma (host side)."""
        return self.values[
            int(np.argmin(np.abs(np.log(self.sigmas) - math.log(max(float(sigma), 1e-30)))))
        ]

    def distinct_index(self, sigma: jax.Array) -> jax.Array:
        """(B,) index into `distinct` for traced sigmas (B,)."""
        logs = jnp.log(jnp.asarray(self.sigmas, sigma.dtype))
        j = jnp.argmin(jnp.abs(jnp.log(jnp.maximum(sigma, 1e-30))[:, None] - logs[None, :]), axis=1)
        lookup = jnp.asarray([self.distinct.index(v) for v in self.values])
        return lookup[j]

    def to_dict(self) -> dict:
        return dict(sigmas=[float(s) for s in self.sigmas], values=[_plain(v) for v in self.values])

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        return cls(tuple(float(s) for s in d["sigmas"]), tuple(_plain(v) for v in d["values"]))


def _plain(v):
    return int(v) if float(v).is_integer() else float(v)


def as_schedule(value, sigmas: Sequence[float] | None = None) -> Schedule:
    """A `Schedule` from a constant, a dict (`Schedule.to_dict`), a Schedule, or a function sigma ->
    value evaluated on `sigmas` (default 24 levels log-spaced over [0.002, 80])."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, dict):
        return Schedule.from_dict(value)
    if callable(value):
        grid = np.geomspace(0.002, 80.0, 24) if sigmas is None else np.asarray(sigmas, float)
        return Schedule(tuple(float(s) for s in grid), tuple(_plain(value(float(s))) for s in grid))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return Schedule.constant(_plain(value))
    raise InputError(
        f"Cannot read {value!r} as a schedule: give a number, a function sigma -> value, a "
        f"Schedule or "
        "a dict with 'sigmas' and 'values'."
    )


def by_level(schedule: Schedule, fn: Callable) -> Callable:
    """D(x, sigma) running fn(value, x, sigma) (value static) for each distinct value the batch
    needs, and keeping each example's output of its own value. With one value: fn itself (one
    compile)."""
    values = schedule.distinct
    if len(values) == 1:
        return lambda x, sigma: fn(values[0], x, sigma)

    def denoiser(x, sigma):
        idx = schedule.distinct_index(sigma)
        out = jnp.zeros_like(x)
        for i, v in enumerate(values):
            sel = (idx == i).reshape((-1,) + (1,) * (x.ndim - 1))
            # lax.cond runs only the branches some example needs (a sampler's batch shares one
            # sigma).
            out = jax.lax.cond(jnp.any(idx == i),
                               lambda o, v=v, sel=sel: jnp.where(sel, fn(v, x, sigma), o),
                               lambda o: o, out)
        return out
    return denoiser


# ---------------------------------------------------------------- Kamb & Ganguli's published scales
# files/scales_*.pt of Kambm/convolutional_diffusion, step index 0..19 (low to high noise)
KAMB_SCALES = {
    "cifar10_resnet_circular": (3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 9, 9, 11, 11, 13, 13, 15, 15, 15),
    "cifar10_resnet_zeros": (3, 3, 3, 3, 5, 5, 5, 7, 7, 7, 7, 9, 9, 11, 11, 13, 15, 17, 17, 17),
    "cifar10_unet_zeros": (3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7, 9, 9, 11, 13, 13, 15, 17, 25),
    "celeba_resnet_zeros": (3, 3, 3, 5, 5, 5, 5, 5, 7, 7, 9, 9, 9, 11, 11, 11, 13, 15, 19, 19),
    "celeba_unet_zeros": (3, 3, 3, 3, 3, 3, 3, 5, 5, 5, 5, 5, 7, 7, 9, 9, 9, 13, 19, 27),
    "fmnist_resnet_zeros": (3, 3, 5, 5, 7, 7, 9, 9, 9, 11, 11, 11, 13, 13, 13, 15, 15, 15, 17, 17),
    "fmnist_unet_zeros": (3, 3, 5, 5, 7, 7, 7, 9, 11, 11, 11, 13, 15, 15, 21, 23, 25, 25, 25, 25),
    "mnist_resnet_circular": (3, 3, 5, 5, 5, 7, 7, 9, 9, 9, 11, 11, 11, 11, 9, 9, 7, 7, 3, 3),
    "mnist_resnet_zeros": (3, 3, 5, 5, 5, 7, 7, 7, 9, 9, 11, 11, 11, 11, 13, 15, 15, 15, 15, 15),
    "mnist_unet_zeros": (3, 3, 3, 5, 5, 7, 7, 7, 9, 9, 9, 11, 13, 15, 17, 21, 23, 23, 25, 27),
}


def kamb_sigma(t: float) -> float:
    """VE sigma = b_t / a_t of Kamb & Ganguli's "legacy" cosine process: b_t^2 = 1 - cos^2(t / 1.008
    pi / 2)."""
    angle = t / 1.008 * math.pi / 2
    return math.tan(angle)


def kamb_schedule(name: str, image_size: int = 32, nsteps: int = 20) -> Schedule:
    """A published scale list as (sigma, k) pairs: the machine reads scales[i] at t = i / nsteps (i
    >= 1; index 0 is never used), sigma = kamb_sigma(t). image_size != 32 rescales k by image_size /
    32 (odd, >= 1): the papers' images are 32 x 32."""
    if name not in KAMB_SCALES:
        raise InputError(f"No published scales {name!r}; choose one of {sorted(KAMB_SCALES)}.")
    scales = KAMB_SCALES[name]
    sigmas, ks = [], []
    for i in range(1, nsteps):
        k = scales[i] * image_size / 32
        k = max(1, int(round((k - 1) / 2)) * 2 + 1)
        sigmas.append(kamb_sigma(i / nsteps))
        ks.append(k)
    return Schedule(tuple(sigmas), tuple(ks))
