"""K-subsets of a training pool.

Two published conventions:
  * Pham et al. / the tutorial: the first K indices of a seeded permutation of the pool.
  * Gu et al.: class balanced, the first K / C indices of each class (after the same seeded
    permutation).
Both return sorted-by-selection-order int64 index arrays, so `pool[idx]` is the subset.
"""
from __future__ import annotations

import numpy as np
from diffmem.errors import ConfigError, InputError

__all__ = ["LABEL_MODES", "subset_labels",
           "check_k", "first_k_of_permutation", "class_balanced", "fixed_order", "disjoint_set"]


def check_k(k: int, pool_size: int, what: str = "the pool") -> None:
    """Raise a clear error unless 1 <= k <= pool_size."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"K must be a positive integer, got {k!r}.")
    if k > pool_size:
        raise InputError(
            f"K = {k} is larger than {what} ({pool_size} examples): choose K <= {pool_size} "
            "or a larger dataset.")


def first_k_of_permutation(pool_size: int, k: int, seed: int) -> np.ndarray:
    """Indices of the K-subset: the first `k` entries of a permutation of range(pool_size) seeded by
    `seed`.

    Nested in K for a fixed seed: the K = 100 subset contains the K = 10 subset.
    """
    check_k(k, pool_size)
    perm = np.random.default_rng(seed).permutation(pool_size)
    return perm[:k].astype(np.int64)


def class_balanced(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of a class-balanced K-subset: K / C examples of each of the C classes.

    Args:
      labels: (N,) integer class labels of the pool.
      k: subset size; must be divisible by the number of classes C.
      seed: permutation seed (within each class, examples are taken in permutation order).
    Returns:
      (k,) int64 indices, grouped by class in increasing label order.
    """
    labels = np.asarray(labels)
    check_k(k, labels.shape[0])
    classes = np.unique(labels)
    if k % len(classes):
        raise InputError(
            f"A class-balanced K-subset needs K divisible by the {len(classes)} classes; got K = "
            f"{k}."
        )
    per_class = k // len(classes)
    perm = np.random.default_rng(seed).permutation(labels.shape[0])
    chosen = []
    for c in classes:
        members = perm[labels[perm] == c]
        if len(members) < per_class:
            raise InputError(
                f"Class {c} has only {len(members)} examples; K = {k} needs {per_class} per class."
            )
        chosen.append(members[:per_class])
    return np.concatenate(chosen).astype(np.int64)


def fixed_order(pool_size: int, seed: int) -> np.ndarray:
    """The one recorded order two disjoint sets are cut from: a permutation seeded by `seed`, or the
    pool's own order (e.g. sorted file names) when seed < 0. (pool_size,) int64."""
    if seed < 0:
        return np.arange(pool_size, dtype=np.int64)
    return np.random.default_rng(seed).permutation(pool_size).astype(np.int64)


def disjoint_set(pool_size: int, n: int, seed: int, which: str) -> np.ndarray:
    """Kadkhodaie et al.'s disjoint training sets: S1 = the first n ("first") and S2 = the last n
    ("last") of `fixed_order(pool_size, seed)`; n is capped by the caller at pool_size // 2 so they
    never overlap."""
    if which not in ("first", "last"):
        raise InputError(f"which must be 'first' (S1) or 'last' (S2); got {which!r}.")
    check_k(n, pool_size // 2, f"half the pool ({pool_size} examples; S1 and S2 must be disjoint)")
    order = fixed_order(pool_size, seed)
    return order[:n] if which == "first" else order[pool_size - n:]


LABEL_MODES = ("none", "true", "random", "unique")


def subset_labels(
    mode: str, k: int, true_labels: np.ndarray | None, label_dim: int, seed: int
) -> np.ndarray | None:
    """Class labels of a K-subset for Gu et al.'s conditioning study, (K,) int64, or None for
    "none".

    "true": the dataset's labels; "random": labels drawn uniformly from 0..label_dim-1 once per
    image (seeded); "unique": image i is class i (label_dim >= K). Every mode but "none" needs
    label_dim > 0.
    """
    if mode == "none":
        return None
    if mode not in LABEL_MODES:
        raise ConfigError(f"Unknown label mode {mode!r}; valid: {list(LABEL_MODES)}.")
    if label_dim <= 0:
        raise ConfigError(
            f"data.labels={mode!r} needs a conditional network: set model.label_dim > 0."
        )
    if mode == "true":
        if true_labels is None:
            raise ConfigError("data.labels='true' needs a dataset with class labels.")
        if int(true_labels.max()) >= label_dim:
            raise ConfigError(
                f"data.labels='true': labels go up to {int(true_labels.max())}, but "
                f"model.label_dim = {label_dim}."
            )
        return np.asarray(true_labels, np.int64)
    if mode == "random":
        return np.random.default_rng(seed).integers(0, label_dim, k).astype(np.int64)
    if label_dim < k:
        raise ConfigError(
            f"data.labels='unique' gives each of the K = {k} images its own class: "
            f"model.label_dim must be >= K, got {label_dim}."
        )
    return np.arange(k, dtype=np.int64)
