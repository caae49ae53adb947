"""Thresholds of Pham et al.'s classes calibrated from real data (the class fractions' error bars:
`diffmem.stats.bootstrap_fractions`).

Pham et al.'s fixed LPIPS thresholds (delta_m = 0.03, delta_s = 0.02) were chosen for their images;
on another dataset, resolution or metric they can label almost everything memorized (8x8 digits:
97-99% at every K), and a pixel metric has no published thresholds at all. Here the thresholds come
from real images the model never saw, so that a model whose samples are fresh draws of the data
distribution is labelled memorized / spurious with probability `quantile` each, whatever the scale
of the metric:

    delta_m = quantile_q { d(h, nearest training image) : h held-out }
    delta_s = quantile_q { d(h, nearest other real image among N - 1) : h held-out }

    # Thresholds(delta_m, delta_s, ...)
    t = calibrate(train, heldout, metric="pixel", num_samples=500)

Held-out images are the dataset pool minus the model's training subset (`heldout_images`). When
fewer than `min_heldout` exist (K = the whole dataset), delta_m comes from leave-one-out over the
training set (a training image's distance to the *other* training images) and `method` says so.

delta_s and the sample count: a sample's d_s is its distance to the nearest of the N - 1 *other*
samples, and nearest-neighbour distances shrink as the reference set grows (~ n^(-1/d) for intrinsic
dimension d). Rescaling by n^(-1/d) would need d, which is not known for images; instead the real
images are split at random into groups of exactly N, and each image's nearest other image *within
its group* is taken, so every reference distance is a nearest-of-(N - 1) distance, the same
statistic as d_s, with no model of d. A last incomplete group is filled up with images of the other
groups (used as references only). When fewer than N held-out images exist, the training images join
them (they are i.i.d. draws of the same distribution; delta_s does not involve the training set's
role); when even that is fewer than N, one group of all of them is used and `num_reference` (< N -
1) records it: then delta_s is somewhat too large (slightly more samples spurious).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from diffmem.errors import InputError
from diffmem.metrics import neighbours

__all__ = ["METHODS", "Thresholds", "fixed", "heldout_images", "pixel_features", "metric_features",
           "calibrate", "PoolFeatures", "calibrate_pool"]

METHODS = ("heldout", "leave-one-out")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Thresholds of Pham et al.'s classes and where they came from.

    method: "heldout" or "leave-one-out" (calibrated), "published" (Pham et al.'s LPIPS values) or
    "given". quantile: the calibration quantile (None unless calibrated). num_heldout: real images
    delta_m's quantile is taken over (held-out images, or training images for leave-one-out).
    num_reference: others each real image of delta_s is compared with (N - 1 when enough real images
    exist). delta_s_source: "heldout" or "heldout+train" (the pool of real images delta_s was drawn
    from).
    """
    delta_m: float
    delta_s: float
    method: str
    quantile: float | None
    metric: str
    num_heldout: int = 0
    num_reference: int = 0
    delta_s_source: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def fixed(delta_m: float, delta_s: float, metric: str, method: str = "given") -> Thresholds:
    """Thresholds given by hand (method "given") or published ones (method "published")."""
    if not (np.isfinite(delta_m) and np.isfinite(delta_s)) or delta_m < 0 or delta_s < 0:
        raise InputError(
            f"Thresholds must be finite and >= 0; got delta_m={delta_m}, delta_s={delta_s}."
        )
    return Thresholds(float(delta_m), float(delta_s), method, None, metric)


def heldout_images(pool: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The pool's rows not in the training subset `indices` (the real images a model never saw)."""
    keep = np.ones(len(pool), bool)
    keep[np.asarray(indices, np.int64)] = False
    return pool[keep]


def pixel_features(images) -> np.ndarray:
    """Flattened images (N, D) float32: Euclidean distance of these rows is pixel L2."""
    x = np.asarray(images, np.float32)
    return x.reshape(len(x), -1)


def metric_features(
    metric: str, lpips_weights=None
) -> tuple[Callable[[np.ndarray], np.ndarray], bool]:
    """(feature map, squared) of a classification metric: distance = ||f(a) - f(b)|| (pixel L2) or
    its square (LPIPS = ||phi(a) - phi(b)||^2, `diffmem.metrics.lpips.feature_map`)."""
    if metric == "pixel":
        return pixel_features, False
    if metric == "lpips":
        if lpips_weights is None:
            raise InputError(
                "metric='lpips' needs lpips_weights "
                "(diffmem.metrics.lpips.load_weights('alexnet'))."
            )
        from diffmem.metrics import lpips
        return (lambda x: lpips.features(lpips_weights, x)), True
    raise InputError(f"Unknown metric {metric!r}; choose 'pixel' or 'lpips' (or pass features=).")


def calibrate(train, heldout, *, metric: str = "pixel", features: Callable | None = None,
              squared: bool | None = None, lpips_weights=None, quantile: float = 0.01,
              num_samples: int | None = None, min_heldout: int = 64, max_heldout: int = 10_000,
              seed: int = 0, mesh=None) -> Thresholds:
    """delta_m and delta_s as the `quantile` of real images' nearest-training and nearest-other
    distances.

    Args:
      train: (K, *S) the model's training set. heldout: (M, *S) real images not in it (M may be 0).
      metric: "pixel" (L2 of flattened images) or "lpips" (needs lpips_weights); with `features` any
      name. features, squared: a custom feature map images -> (n, F) and whether the distance is the
        squared Euclidean distance of features (LPIPS) rather than the distance itself.
      quantile: in (0, 1); the expected fraction of fresh real images labelled memorized (and
      spurious). num_samples: N, the size of the sample set the thresholds will classify (delta_s
      uses groups of N, see
        the module docstring); None: M (all held-out images as one group).
      min_heldout: below this many held-out images, leave-one-out over the training set.
      max_heldout: a random subset of at most this many held-out images is used (cost).
      seed: the random subsets and groups (deterministic given the seed).
      mesh: shards the k-NN queries over devices.
    """
    if not 0 < quantile < 1:
        raise InputError(f"quantile = {quantile}: give a value in (0, 1), e.g. 0.01.")
    train = np.asarray(train, np.float32)
    heldout = np.asarray(heldout, np.float32).reshape((-1,) + train.shape[1:])
    if features is None:
        features, default_squared = metric_features(metric, lpips_weights)
        squared = default_squared if squared is None else squared
    squared = bool(squared)
    rng = np.random.default_rng(seed)
    if len(heldout) > max_heldout:
        heldout = heldout[np.sort(rng.choice(len(heldout), max_heldout, replace=False))]
    f_train = np.asarray(features(train), np.float32)
    f_held = (
        np.asarray(features(heldout), np.float32)
        if len(heldout)
        else np.zeros((0, f_train.shape[1]), np.float32)
    )
    if len(heldout) >= min_heldout:
        method, d_m = "heldout", _nearest_distance(f_held, f_train, exclude_self=False, mesh=mesh)
    else:
        if len(train) < 2:
            raise InputError(
                f"Cannot calibrate: {len(heldout)} held-out images (< min_heldout = {min_heldout}) "
                f"and "
                f"K = {len(train)} training images (leave-one-out needs >= 2). Pass thresholds "
                "explicitly (delta_m, delta_s)."
            )
        d_m = _nearest_distance(f_train, f_train, exclude_self=True, mesh=mesh)
        method = "leave-one-out"
    n = len(heldout) if num_samples is None else int(num_samples)
    if n < 2:
        raise InputError(f"num_samples = {n}: d_s needs >= 2 samples.")
    if len(heldout) >= max(n, min_heldout):
        real, source = f_held, "heldout"
    else:
        real, source = np.concatenate([f_held, f_train]), "heldout+train"
    if len(real) < 2:
        raise InputError(
            f"Cannot calibrate delta_s from {len(real)} real image(s); pass thresholds explicitly."
        )
    d_s, group = _nearest_in_groups(real, n, rng, mesh)
    if squared:
        d_m, d_s = d_m**2, d_s**2
    return Thresholds(float(np.quantile(d_m, quantile)), float(np.quantile(d_s, quantile)), method,
                      float(quantile), metric, num_heldout=len(d_m), num_reference=group - 1,
                      delta_s_source=source)


class PoolFeatures:
    """Features of a dataset pool's rows, each computed once on first use: the models of one workdir
    share their training and held-out images (LPIPS features of the pool are the costly part of
    calibrating)."""

    def __init__(self, pool: np.ndarray, features: Callable[[np.ndarray], np.ndarray]):
        self.pool, self.features = pool, features
        self._have = np.zeros(len(pool), bool)
        self._store: np.ndarray | None = None

    def __call__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        missing = np.unique(rows[~self._have[rows]])
        if len(missing):
            f = np.asarray(self.features(self.pool[missing]), np.float32)
            if self._store is None:
                self._store = np.zeros((len(self.pool), f.shape[1]), np.float32)
            self._store[missing], self._have[missing] = f, True
        return self._store[rows] if self._store is not None else np.zeros((0, 0), np.float32)


def calibrate_pool(pool_features: PoolFeatures, indices, *, metric: str, squared: bool,
                   quantile: float = 0.01, num_samples: int | None = None, min_heldout: int = 64,
                   max_heldout: int = 10_000, seed: int = 0, mesh=None) -> Thresholds:
    """`calibrate` for the model trained on pool rows `indices`: held-out = the other rows (a seeded
    subset of at most max_heldout), features from the shared `pool_features`."""
    keep = np.ones(len(pool_features.pool), bool)
    keep[np.asarray(indices, np.int64)] = False
    held = np.flatnonzero(keep)
    if len(held) > max_heldout:
        held = np.sort(np.random.default_rng(seed).choice(held, max_heldout, replace=False))
    return calibrate(pool_features(indices), pool_features(held), metric=metric, features=_as_rows,
                     squared=squared, quantile=quantile, num_samples=num_samples,
                     min_heldout=min_heldout, max_heldout=max_heldout, seed=seed, mesh=mesh)


def _as_rows(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def _nearest_distance(queries, refs, *, exclude_self: bool = False, mesh=None) -> np.ndarray:
    """(N,) float64 L2 distance of each feature row to its nearest ref row (`neighbours`)."""
    near = neighbours.nearest(queries, refs, 1, exclude_self=exclude_self, mesh=mesh)
    return near.distances[:, 0]


def _nearest_in_groups(
    feats: np.ndarray, n: int, rng: np.random.Generator, mesh=None
) -> tuple[np.ndarray, int]:
    """Each row's distance to its nearest other row within a random group of min(n, len) rows
    (module docstring). Returns (distances (len,), group size)."""
    total = len(feats)
    g = min(n, total)
    perm = rng.permutation(total)
    full = total // g
    out = []
    for b in range(full):
        idx = perm[b * g:(b + 1) * g]
        out.append(_nearest_distance(feats[idx], feats[idx], exclude_self=True, mesh=mesh))
    rest = perm[full * g:]
    if len(rest):  # queries only with its own rows; references filled up from the complete groups
        fill = rng.choice(perm[:full * g], g - len(rest), replace=False)
        refs = feats[np.concatenate([rest, fill])]
        out.append(_nearest_distance(feats[rest], refs, exclude_self=True, mesh=mesh))
    return np.concatenate(out), g
