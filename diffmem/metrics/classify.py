"""Pham et al.'s classification of generated samples into memorized / spurious / generalized.

With d_m the distance from a sample to its nearest training example and d_s the distance to its
nearest
*other* generated sample (both in LPIPS units by default, or pixels):
    memorized   iff d_m <= delta_m
    spurious    iff not memorized and d_s <= delta_s
    generalized otherwise.
Published example thresholds (LPIPS): delta_m = 0.03, delta_s = 0.02.
"""
from __future__ import annotations

import numpy as np
from diffmem.errors import InputError
from diffmem.metrics.distances import require_unsquared

__all__ = ["NAMES", "classify", "counts", "fractions"]

MEMORIZED, SPURIOUS, GENERALIZED = 0, 1, 2
NAMES = ("memorized", "spurious", "generalized")


def classify(
    d_train: np.ndarray, d_samples: np.ndarray, delta_m: float = 0.03, delta_s: float = 0.02
) -> np.ndarray:
    """Labels (N,) in {MEMORIZED, SPURIOUS, GENERALIZED} from nearest-neighbour distances d_m, d_s
    (N,): unsquared (L2 from `neighbours.nearest`, or LPIPS values), in the units of the deltas."""
    require_unsquared(d_train=d_train, d_samples=d_samples)
    d_train, d_samples = np.asarray(d_train), np.asarray(d_samples)
    if d_train.shape != d_samples.shape or d_train.ndim != 1:
        raise InputError(
            f"d_train and d_samples must be (N,) arrays of the same length; got {d_train.shape} "
            f"and {d_samples.shape}."
        )
    if np.isnan(d_train).any() or np.isnan(d_samples).any():
        raise InputError(
            "Distances contain NaN: recompute the nearest-neighbour distances (a NaN sample?)."
        )
    if delta_m < 0 or delta_s < 0:
        raise InputError(
            f"Thresholds must be non-negative; got delta_m={delta_m}, delta_s={delta_s}."
        )
    labels = np.full(d_train.shape, GENERALIZED, np.int8)
    labels[d_samples <= delta_s] = SPURIOUS
    labels[d_train <= delta_m] = MEMORIZED
    return labels


def counts(labels: np.ndarray) -> dict[str, int]:
    """{"memorized": n_m, "spurious": n_s, "generalized": n_g}, summing to len(labels)."""
    labels = np.asarray(labels)
    return {name: int(np.sum(labels == i)) for i, name in enumerate(NAMES)}


def fractions(labels: np.ndarray) -> dict[str, float]:
    """{"memorized": f_m, "spurious": f_s, "generalized": f_g}, summing to 1."""
    labels = np.asarray(labels)
    n = max(len(labels), 1)
    return {name: float(np.sum(labels == i)) / n for i, name in enumerate(NAMES)}
