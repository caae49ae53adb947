"""The percentile bootstrap, one implementation for every interval diffmem reports.

    b = bootstrap(flags)                                # (N,) values: mean, se, lo, hi, replicates
    ci = bootstrap_fractions(labels, classify.NAMES)    # {"memorized": (lo, hi), ...}

Resampling: `num` resamples of the N values with replacement, drawn at once as
`np.random.default_rng(seed).integers(0, N, (num, N))` (deterministic given `seed`, which may be
anything `default_rng` takes, e.g. [seed, K, step]); the interval is the ((1 - level) / 2,
(1 + level) / 2) quantiles of the statistic over the resamples (linear interpolation, numpy's
default). Memory: num * N indices (8 MB per 1000 x 1000).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from diffmem.errors import InputError

__all__ = ["bootstrap", "bootstrap_fractions"]


def _mean(resampled: np.ndarray) -> np.ndarray:
    return resampled.mean(axis=1)


def bootstrap(values, stat: Callable[[np.ndarray], np.ndarray] = _mean, *, num: int = 1000, seed=0,
              level: float = 0.95) -> dict:
    """Percentile bootstrap of a statistic of `values` (N, ...), resampling the N rows.

    Args:
      values: (N, ...) array, N >= 1.
      stat: resamples (num, N, ...) -> (num, ...) statistic of each resample; applied to
        values[None] for the point estimate. Default: the mean over the N rows.
      num: resamples (>= 1); seed: for `np.random.default_rng`; level: the coverage, in (0, 1).
    Returns:
      {"mean": the statistic of `values` (float or array), "se": the resamples' standard deviation
       (ddof 1; 0 for num = 1), "lo", "hi": the percentile interval, "replicates": (num, ...)}.
    """
    v = np.asarray(values)
    if v.ndim < 1 or len(v) == 0:
        raise InputError(f"bootstrap needs a non-empty (N, ...) array; got shape {v.shape}.")
    if not 0 < level < 1 or num < 1:
        raise InputError(f"level = {level} must be in (0, 1) and num = {num} >= 1.")
    idx = np.random.default_rng(seed).integers(0, len(v), (num, len(v)))
    reps = np.asarray(stat(v[idx]))
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [a, 1.0 - a], axis=0)
    se = reps.std(axis=0, ddof=1) if num > 1 else np.zeros_like(reps[0], np.float64)
    est = np.asarray(stat(v[None]))[0]
    scalar = lambda x: float(x) if np.ndim(x) == 0 else np.asarray(x)  # noqa: E731
    return dict(mean=scalar(est), se=scalar(se), lo=scalar(lo), hi=scalar(hi), replicates=reps)


def bootstrap_fractions(labels, classes: Sequence[str], *, num: int = 1000, seed=0,
                        level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap intervals of class fractions: {classes[i]: (lo, hi)} for labels (N,) in
    0 .. len(classes) - 1 (label i is class classes[i]). All classes share the same resamples. A
    class never observed gets (0, 0): the bootstrap cannot see beyond the data (with N labels the
    one-sided 95% upper bound of an unseen class is ~3/N)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise InputError(f"labels must be a non-empty (N,) array; got shape {labels.shape}.")
    known = np.zeros(len(labels), bool)
    for i in range(len(classes)):
        known |= labels == i
    if not known.all():
        raise InputError(f"labels must be class indices 0..{len(classes) - 1} "
                         f"({tuple(classes)}); got {np.unique(labels)}.")

    def per_class(resampled):  # (num, N) -> (num, C)
        return np.stack([np.mean(resampled == i, axis=1) for i in range(len(classes))], axis=1)

    b = bootstrap(labels, per_class, num=num, seed=seed, level=level)
    return {c: (float(b["lo"][i]), float(b["hi"][i])) for i, c in enumerate(classes)}
