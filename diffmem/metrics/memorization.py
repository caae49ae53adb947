"""Gu et al.'s memorization ratio and effective model memorization (EMM).

A sample is memorized iff d1 / d2 < 1/3, with d1, d2 its distances (pixel L2, to *all* training images)
to the nearest and second-nearest training image. The memorization ratio is the memorized fraction; Gu et
al. report its maximum over training snapshots. EMM is the largest K whose ratio is >= 90%.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import numpy as np


def is_memorized(d1: np.ndarray, d2: np.ndarray, threshold: float = 1.0 / 3.0) -> np.ndarray:
    """(N,) booleans d1 / d2 < threshold (d1 <= d2 are *unsquared* L2 distances). d2 = 0 counts as memorized
    only if d1 = 0 too (an exact duplicate pair in the training set)."""
    d1, d2 = np.asarray(d1, np.float64), np.asarray(d2, np.float64)
    if np.any(d1 > d2 * (1 + 1e-6) + 1e-12):
        raise ValueError("d1 must be the nearest and d2 the second-nearest distance (d1 <= d2).")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), np.where(d1 > 0, np.inf, 0.0))
    return ratio < threshold


def memorization_ratio(d1: np.ndarray, d2: np.ndarray, threshold: float = 1.0 / 3.0) -> float:
    """Fraction of samples with d1 / d2 < threshold."""
    return float(np.mean(is_memorized(d1, d2, threshold)))


def max_over_snapshots(ratios: Mapping[int, float]) -> tuple[int, float]:
    """(step, ratio) of the snapshot with the highest memorization ratio (Gu et al.'s reported value)."""
    if not ratios:
        raise ValueError("No snapshots to take the maximum over.")
    step = max(ratios, key=lambda s: (ratios[s], -s))
    return step, ratios[step]


def find_emm(ratio_at: Callable[[int], float], k_grid: Iterable[int], level: float = 0.9,
             tolerance: float = 0.05, known: Mapping[int, float] | None = None) -> dict:
    """Effective model memorization: the largest K with memorization ratio >= `level`.

    Brackets on the increasing `k_grid` (the last K still >= level and the first K below it), then bisects
    in log K until the bracket's relative width is below `tolerance`. `ratio_at(K)` trains/samples/measures
    a model on demand; results in `known` (finished runs) are reused and never recomputed.
    Returns {"emm": K or None, "bracket": (lo, hi), "ratios": {K: ratio}} where emm is None if even the
    smallest K is below the level (and the largest grid K if all are above).
    """
    ratios: dict[int, float] = dict(known or {})

    def r(k: int) -> float:
        if k not in ratios:
            ratios[k] = float(ratio_at(k))
        return ratios[k]

    grid = sorted(set(int(k) for k in k_grid))
    if not grid:
        raise ValueError("k_grid is empty.")
    lo = hi = None
    for k in grid:
        if r(k) >= level:
            lo = k
        else:
            hi = k
            break
    if lo is None:
        return {"emm": None, "bracket": (None, grid[0]), "ratios": ratios}
    if hi is None:
        return {"emm": lo, "bracket": (lo, None), "ratios": ratios}
    while hi - lo > 1 and (hi - lo) / lo > tolerance:
        mid = int(round(math.sqrt(lo * hi)))
        mid = min(max(mid, lo + 1), hi - 1)
        if r(mid) >= level:
            lo = mid
        else:
            hi = mid
    return {"emm": lo, "bracket": (lo, hi), "ratios": dict(sorted(ratios.items()))}
