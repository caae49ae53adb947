"""Gu et al.'s memorization ratio and effective model memorization (EMM).

A sample is memorized iff d1 / d2 < 1/3, with d1, d2 its distances (pixel L2, to *all* training
images) to the nearest and second-nearest training image. The memorization ratio is the memorized
fraction; Gu et al. report its maximum over training snapshots. EMM is the largest K whose ratio is
>= 90%.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import numpy as np
from diffmem.errors import InputError
from diffmem.metrics import classify, neighbours
from diffmem.metrics.distances import require_unsquared

__all__ = ["is_memorized", "memorization_ratio", "ratio_of", "neighbour_arrays", "label",
           "max_over_snapshots", "find_emm"]


def is_memorized(d1: np.ndarray, d2: np.ndarray, threshold: float = 1.0 / 3.0) -> np.ndarray:
    """(N,) booleans d1 / d2 < threshold (d1 <= d2 are *unsquared* L2 distances). d2 = 0 counts as
    memorized only if d1 = 0 too (an exact duplicate pair in the training set). Squared distances
    (`distances.knn`) are refused: (d1 / d2)^2 < 1/3 is another criterion;
    `neighbours.nearest(samples, train, k=2)` gives the right d1, d2 (or use `ratio_of`)."""
    require_unsquared(d1=d1, d2=d2)
    d1, d2 = np.asarray(d1, np.float64), np.asarray(d2, np.float64)
    if np.any(d1 > d2 * (1 + 1e-6) + 1e-12):
        raise InputError("d1 must be the nearest and d2 the second-nearest distance (d1 <= d2).")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), np.where(d1 > 0, np.inf, 0.0))
    return ratio < threshold


def memorization_ratio(d1: np.ndarray, d2: np.ndarray, threshold: float = 1.0 / 3.0) -> float:
    """Fraction of samples with d1 / d2 < threshold."""
    return float(np.mean(is_memorized(d1, d2, threshold)))


def ratio_of(samples, train, threshold: float = 1.0 / 3.0, mesh=None) -> float | None:
    """Gu et al.'s memorization ratio of samples (N, *S) against all of train (K, *S) by exact
    pixel L2 (`neighbours.nearest`, k = 2); None for K < 2 (no second-nearest training example)."""
    if len(train) < 2:
        return None
    d = neighbours.nearest(samples, train, 2, mesh=mesh).distances
    return memorization_ratio(d[:, 0], d[:, 1], threshold)


def neighbour_arrays(samples, train, *, metric: str = "pixel", lpips_weights=None, mesh=None
                     ) -> dict[str, np.ndarray]:
    """Nearest training images and nearest other samples of `samples` (N, H, W, C) among `train`
    (K, H, W, C), as the memorization study stores them (`neighbours.nearest`: exact pixel L2,
    stored as float32):

      train_dist (N, 2): pixel L2 to the nearest and second-nearest training image (inf if K = 1);
      train_idx (N, 2): int64 their indices (-1 if K = 1);
      sample_dist (N,): pixel L2 to the nearest other sample; sample_idx (N,): its index;
      d_m, d_m_idx, d_s, d_s_idx: the nearest training image and nearest other sample in `metric`
        ("pixel": the values above; "lpips": LPIPS values by `lpips.lpips_knn`, which needs
        `lpips_weights`).
    `mesh` shards the k-NN's queries over devices.
    """
    samples, train = np.asarray(samples, np.float32), np.asarray(train, np.float32)
    n, m = len(samples), len(train)
    if samples.shape[1:] != train.shape[1:]:
        raise InputError(f"Samples of shape {samples.shape[1:]} cannot be compared with "
                         f"training images of shape {train.shape[1:]}: were they sampled from "
                         "this workdir's models?")
    if n < 2 or m < 1:
        raise InputError(f"Need >= 2 samples (nearest *other* sample) and >= 1 training image; got "
                         f"{n} and {m}.")
    d, i = neighbours.nearest(samples, train, min(2, m), mesh=mesh)
    d = d.astype(np.float32)
    if m == 1:
        d = np.pad(d, ((0, 0), (0, 1)), constant_values=np.inf)
        i = np.pad(i, ((0, 0), (0, 1)), constant_values=-1)
    ds, js = neighbours.nearest(samples, samples, 1, exclude_self=True, mesh=mesh)
    out = dict(train_dist=d, train_idx=i, sample_dist=ds[:, 0].astype(np.float32),
               sample_idx=js[:, 0])
    if metric == "pixel":
        out.update(d_m=d[:, 0], d_m_idx=i[:, 0], d_s=out["sample_dist"], d_s_idx=js[:, 0])
    elif metric == "lpips":
        from diffmem.metrics import lpips
        if lpips_weights is None:
            raise InputError("metric='lpips' needs lpips_weights "
                             "(diffmem.metrics.lpips.load_weights('alexnet')).")
        dm, im = lpips.lpips_knn(lpips_weights, samples, train, 1, mesh=mesh,
                                 **neighbours.tiles(n, m))
        dd, jd = lpips.lpips_knn(lpips_weights, samples, samples, 1, exclude_self_offset=0,
                                 mesh=mesh, **neighbours.tiles(n, n))
        out.update(d_m=dm[:, 0], d_m_idx=im[:, 0], d_s=dd[:, 0], d_s_idx=jd[:, 0])
    else:
        raise InputError(f"Unknown metric {metric!r}; choose 'pixel' or 'lpips'.")
    return out


def label(arrays: dict[str, np.ndarray], thresholds) -> dict[str, np.ndarray]:
    """Add Pham et al.'s `labels` (`classify.classify` of d_m, d_s) and Gu et al.'s `gu_memorized`
    (of train_dist) to the arrays of `neighbour_arrays`; `thresholds`: anything with delta_m and
    delta_s (a `calibration.Thresholds`)."""
    if thresholds.delta_m is None or thresholds.delta_s is None:
        raise InputError("Calibrated settings have no thresholds of their own: label with the "
                         "model's calibration.Thresholds.")
    d = arrays["train_dist"]
    return dict(arrays, labels=classify.classify(arrays["d_m"], arrays["d_s"], thresholds.delta_m,
                                                 thresholds.delta_s),
                gu_memorized=is_memorized(d[:, 0], d[:, 1]))


def max_over_snapshots(ratios: Mapping[int, float]) -> tuple[int, float]:
    """(step, ratio) of the snapshot with the highest memorization ratio (Gu et al.'s reported
    value)."""
    if not ratios:
        raise InputError("No snapshots to take the maximum over.")
    step = max(ratios, key=lambda s: (ratios[s], -s))
    return step, ratios[step]


def find_emm(ratio_at: Callable[[int], float], k_grid: Iterable[int], level: float = 0.9,
             tolerance: float = 0.05, known: Mapping[int, float] | None = None,
             on_result: Callable[[dict], None] | None = None) -> dict:
    """Effective model memorization: the largest K with memorization ratio >= `level`.

    Assumes the ratio falls with K. Scans the increasing `k_grid` for a bracket (lo = the last K
    still
    >= level, hi = the first K below it), then bisects in log K (mid = round(sqrt(lo * hi))) until
    hi - lo == 1 or the bracket's relative width (hi - lo) / lo is <= `tolerance` (tolerance=0: the
    exact integer answer). `ratio_at(K)` trains/samples/measures a model on demand; results in
    `known` (finished runs) are reused and never recomputed, and each K is evaluated at most once.

    Args:
      ratio_at: K -> memorization ratio in [0, 1].
      k_grid: the K values to bracket on (any order; duplicates ignored).
      level: the memorization level (Gu et al.: 0.9).
      tolerance: stop bisecting once (hi - lo) / lo <= tolerance.
      known: {K: ratio} already measured.
      on_result: called with the current result dict (as returned below) after every new evaluation,
        e.g. to save progress.
    Returns:
      {"emm": K or None, "bracket": (lo, hi), "ratios": {K: ratio}, "history": [...], "status": str,
       "level", "tolerance"}. status is "bracketed" (emm = lo), "below_grid" (even the smallest K is
       below
      the level: emm None, bracket (None, smallest K)) or "above_grid" (every grid K is >= level:
      emm is the largest grid K, a lower bound; bracket (largest K, None)). history lists every K
      looked at in order: {"k", "ratio", "phase" ("grid" | "bisect"), "reused" (from `known`),
      "bracket" after it}.
    """
    if not 0.0 < level <= 1.0:
        raise InputError(f"level = {level} must be in (0, 1] (Gu et al. use 0.9).")
    if tolerance < 0:
        raise InputError(
            f"tolerance = {tolerance} must be >= 0 (0 bisects to the exact integer K)."
        )
    grid = sorted(set(int(k) for k in k_grid))
    if not grid:
        raise InputError("k_grid is empty: give at least one K, e.g. 250,500,1000,2000.")
    if grid[0] < 1:
        raise InputError(f"k_grid holds K = {grid[0]}; training-set sizes must be >= 1.")
    known = {int(k): float(v) for k, v in (known or {}).items()}
    ratios: dict[int, float] = {}
    history: list[dict] = []
    state = {"lo": None, "hi": None}

    def result(status: str) -> dict:
        emm = state["lo"] if status != "below_grid" else None
        return {"emm": emm, "bracket": (state["lo"], state["hi"]),
                "ratios": dict(sorted(ratios.items())), "history": list(history), "status": status,
                "level": level, "tolerance": tolerance}

    def r(k: int, phase: str) -> float:
        if k in ratios:
            return ratios[k]
        reused = k in known
        ratios[k] = known[k] if reused else float(ratio_at(k))
        if ratios[k] >= level:
            state["lo"] = k if state["lo"] is None else max(state["lo"], k)
        else:
            state["hi"] = k if state["hi"] is None else min(state["hi"], k)
        history.append({"k": k, "ratio": ratios[k], "phase": phase, "reused": reused,
                        "bracket": (state["lo"], state["hi"])})
        if on_result is not None and not reused:
            on_result(result("searching"))
        return ratios[k]

    for k in grid:
        if r(k, "grid") < level:
            break
    lo, hi = state["lo"], state["hi"]
    if lo is None:
        return result("below_grid")
    if hi is None:
        return result("above_grid")
    while hi - lo > 1 and (hi - lo) / lo > tolerance:
        mid = min(max(int(round(math.sqrt(lo * hi))), lo + 1), hi - 1)
        if r(mid, "bisect") >= level:
            lo = mid
        else:
            hi = mid
    # non-monotone ratios must not move the bracket off the search path
    state["lo"], state["hi"] = lo, hi
    return result("bracketed")
