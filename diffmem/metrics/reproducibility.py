"""Zhang et al.'s reproducibility (RP) and generalization scores, with pluggable features.

RP score: the fraction of same-seed sample pairs from two models whose feature cosine similarity
exceeds 0.6. Generalization score: 1 - the fraction of samples whose best cosine similarity to any
training image exceeds 0.6. Features: mean-removed pixels (`pixel_features`), LPIPS features
(`diffmem.metrics.lpips`), or any user extractor `f(images (N,H,W,C)) -> (N, D)` (e.g. SSCD).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from diffmem.metrics import neighbours

__all__ = ["Extractor", "pixel_features", "normalize", "rp_score", "max_cosine_to_set",
           "generalization_score"]

Extractor = Callable[[np.ndarray], np.ndarray]


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Flattened images with each image's mean removed, (N, H*W*C)."""
    x = np.asarray(images, np.float32).reshape(len(images), -1)
    return x - x.mean(axis=1, keepdims=True)


def normalize(features: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    f = np.asarray(features, np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), eps)


def rp_score(features_a: np.ndarray, features_b: np.ndarray, threshold: float = 0.6) -> float:
    """Fraction of same-seed pairs (row i of a with row i of b) with cosine similarity >
    threshold."""
    if features_a.shape != features_b.shape:
        raise ValueError(
            f"RP needs same-seed pairs: feature arrays differ in shape {features_a.shape} vs "
            f"{features_b.shape}."
        )
    cos = np.sum(normalize(features_a) * normalize(features_b), axis=1)
    return float(np.mean(cos > threshold))


def max_cosine_to_set(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Best cosine similarity of each row of `features` (N, D) to any row of `reference` (M, D):
    (N,) float32 (`neighbours.most_similar`, exact; no N x M matrix is kept)."""
    return neighbours.most_similar(features, reference).cosines.astype(np.float32)


def generalization_score(
    features: np.ndarray, train_features: np.ndarray, threshold: float = 0.6
) -> float:
    """1 - fraction of samples whose best cosine similarity to the training set exceeds
    `threshold`."""
    return 1.0 - float(np.mean(max_cosine_to_set(features, train_features) > threshold))
