"""Training schedules measured in images, turned into steps per sweep member at train time (as EDM
does).

A config's `schedule` section (image configs; `image_configs.schedule_section`) gives the training
length, the learning-rate ramp-up and the EMA half-life in Mimg. The trainer converts them for each
member with that member's own K and batch (`member_schedule`), so the members of a K sweep, and
every K of an EMM bisection, each get their own schedule:

    scale_with_k   False: x Mimg = int(1000 x) kimg (EDM's train.py)
                   True:  Gu et al.'s |D| scaling: x is the figure for |D| = 50,000 and a member
                          trained on K images gets int(x K / 50) kimg (their train.py truncates each
                          to whole kimg)
    duration_mimg      training images; steps = ceil(kimg * 1000 / batch)
                       (0: `config.steps` for every member)
    lr_rampup_mimg     learning rate lr * min(images seen / ramp-up images, 1)
                       (0: `optim.warmup_steps`)
    ema_halflife_mimg  EMA decay 0.5 ** (batch / h) per step, h the half-life in images, capped
                       during the ramp-up at ema_rampup_ratio * images seen (EDM: 0.05; 0 = no
                       ramp-up)   (0: `ema.decay`)
    ema_mode           "edm": h as above; "gu": Gu et al.'s default ("mode2"), h multiplied by
                       50,000 / K, which makes the EMA about 0.5 Mimg for every K >= 100 (decay
                       0.99929 at batch 512) and no EMA (decay 0) below K = 100, where their
                       half-life rounds to 0 kimg

"Images seen" before step s is s * batch (EDM's cur_nimg): the first step has learning rate 0 and an
EMA decay of 0 (the EMA starts at the step's parameters). Gu et al.'s code writes the "gu" decay
with a literal 512 (their batch) for `batch`; with another batch diffmem keeps the half-life in
images (EDM's rule), so at batch 512 both agree.
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import ml_collections

from diffmem import configlib

__all__ = ["EMA_MODES", "REFERENCE_SIZE", "MemberSchedule", "kimg", "has_schedule", "check",
           "member_schedule", "lr_factor", "ema_decay"]

EMA_MODES = ("edm", "gu")
REFERENCE_SIZE = 50_000   # |D| of CIFAR-10, which Gu et al.'s figures refer to


@dataclasses.dataclass(frozen=True)
class MemberSchedule:
    """The schedule of one sweep member in its own steps.

    steps: optimizer steps. lr_rampup_images: images of the linear ramp-up (-1 = none beyond the
    optimizer's `optim.warmup_steps`). ema_halflife_images: EMA half-life in images after the
    ramp-up, -1 when the EMA follows `ema.decay` / `ema.warmup`. ema_rampup_ratio: the half-life is
    at most this times the images seen.
    """
    k: int
    batch: int
    steps: int
    lr_rampup_images: float = -1.0
    ema_halflife_images: float = -1.0
    ema_rampup_ratio: float = 0.0

    @property
    def warmup_steps(self) -> float:
        """The ramp-up in steps (fractional: the ramp is linear in images); 0 when there is none."""
        return max(self.lr_rampup_images, 0.0) / self.batch

    @property
    def ema_decay(self) -> float:
        """The EMA decay per step after the ramp-up (-1 when the config's fixed `ema.decay`
        applies)."""
        if self.ema_halflife_images < 0:
            return -1.0
        return 0.5 ** (self.batch / max(self.ema_halflife_images, 1e-8))


def kimg(mimg: float, k: int, scale_with_k: bool) -> int:
    """Whole kimg of a figure given in Mimg: int(mimg * k / 50) with Gu et al.'s |D| scaling, else
    int(mimg * 1000) (both as their and EDM's train.py compute it)."""
    return int(mimg * k / 50) if scale_with_k else int(mimg * 1000)


def has_schedule(config: ml_collections.ConfigDict) -> bool:
    """Whether the config gives any part of its schedule in images."""
    s = config.get("schedule", None)
    return s is not None and any(
        s.get(f, 0) for f in ("duration_mimg", "lr_rampup_mimg", "ema_halflife_mimg")
    )


def check(config: ml_collections.ConfigDict) -> None:
    """Clear errors for a schedule that contradicts itself or the config's step-based settings."""
    s = config.get("schedule", None)
    if s is None:
        return
    for f in ("duration_mimg", "lr_rampup_mimg", "ema_halflife_mimg", "ema_rampup_ratio"):
        v = s.get(f, 0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or not math.isfinite(v):
            raise configlib.ConfigError(f"schedule.{f} = {v!r}: give a number >= 0 (0 = off).")
    if s.get("ema_mode", "edm") not in EMA_MODES:
        raise configlib.ConfigError(f"schedule.ema_mode {s.ema_mode!r}; valid: {list(EMA_MODES)}.")
    if s.get("duration_mimg", 0) and config.get("steps", 0):
        raise configlib.ConfigError(
            f"Both steps = {config.steps} and schedule.duration_mimg = {s.duration_mimg} set the "
            f"training length: "
            "set --config.steps=0 to train each member for its schedule, or "
            "--config.schedule.duration_mimg=0 "
            "to train every member for `steps`."
        )
    if not s.get("duration_mimg", 0) and not config.get("steps", 0):
        raise configlib.ConfigError(
            "steps = 0 and schedule.duration_mimg = 0: give the training length in one of them."
        )
    if s.get("lr_rampup_mimg", 0) and config.optim.get("warmup_steps", 0):
        raise configlib.ConfigError(
            f"Both optim.warmup_steps = {config.optim.warmup_steps} and schedule.lr_rampup_mimg = "
            f"{s.lr_rampup_mimg} set the learning-rate ramp-up: set one of them to 0.")


def member_schedule(config: ml_collections.ConfigDict, k: int, batch: int) -> MemberSchedule:
    """The schedule of the member trained on `k` examples with batch `batch` (module docstring)."""
    check(config)
    s = config.get("schedule", None) or ml_collections.ConfigDict()
    scale = bool(s.get("scale_with_k", False))
    steps = config.get("steps", 0)
    if s.get("duration_mimg", 0):
        total_kimg = max(kimg(s.duration_mimg, k, scale), 1)
        steps = math.ceil(total_kimg * 1000 / batch)
    out = dict(k=int(k), batch=int(batch), steps=int(steps))
    if s.get("lr_rampup_mimg", 0):
        out["lr_rampup_images"] = float(kimg(s.lr_rampup_mimg, k, scale) * 1000)
    if s.get("ema_halflife_mimg", 0):
        halflife = float(kimg(s.ema_halflife_mimg, k, scale) * 1000)
        ratio = float(s.get("ema_rampup_ratio", 0.0))
        # Gu et al.'s mode2: h / data_ratio in 512 / h / data_ratio
        if s.get("ema_mode", "edm") == "gu":
            halflife, ratio = halflife * REFERENCE_SIZE / k, ratio * REFERENCE_SIZE / k
        out.update(ema_halflife_images=halflife, ema_rampup_ratio=ratio)
    return MemberSchedule(**out)


# ----------------------------------------------------------------------- in the compiled step (jnp)
def lr_factor(step, batch, rampup_images):
    """Learning-rate multiplier at `step` (images seen = step * batch): min(seen / max(ramp-up,
    1e-8), 1) as EDM computes it (a 0-image ramp-up gives 0 at step 0 only); 1 when rampup_images <
    0 (no ramp-up)."""
    seen = jnp.asarray(step, jnp.float32) * batch
    return jnp.where(
        rampup_images >= 0, jnp.minimum(seen / jnp.maximum(rampup_images, 1e-8), 1.0), 1.0
    )


def ema_decay(step, batch, halflife_images, rampup_ratio):
    """EMA decay at `step`: 0.5 ** (batch / h), h = min(half-life, ratio * images seen) when ratio >
    0 (EDM's ema_rampup_ratio), every h floored at 1e-8 images (so a 0 half-life gives decay 0)."""
    seen = jnp.asarray(step, jnp.float32) * batch
    h = jnp.where(
        rampup_ratio > 0, jnp.minimum(halflife_images, rampup_ratio * seen), halflife_images
    )
    return 0.5 ** (batch / jnp.maximum(h, 1e-8))
