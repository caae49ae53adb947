"""Exact nearest neighbours by unsquared Euclidean (L2) distance: the one implementation in diffmem.

    nb = nearest(samples, train, k=2)      # samples (N, H, W, C), train (K, H, W, C)
    nb.distances                           # (N, 2) float64 L2 distances, ascending
    nb.indices                             # (N, 2) int64 rows of train
    nearest(samples[0], train).distances   # one example (H, W, C): shape (1,)

Units: the distances are plain L2 norms ||q - r|| of the flattened rows (not squared), in the units
of the inputs (pixels in [-1, 1], or feature units). They are what `classify.classify` and
`memorization.is_memorized` take; `distances.knn` returns *squared* distances, and those functions
refuse them (`distances.SquaredDistances`).

How: the neighbours are ranked by the GEMM form ||r||^2 - 2 q.r: in float64 on the host for small
problems (at most `HOST_WORK` multiply-adds and no mesh: nothing to compile), otherwise by the tiled
engine `distances.knn` (float32 GEMMs, sharded over `mesh`). The k distances found are then
recomputed directly in float64 from the rows, so an exact copy is at exactly 0 (the GEMM form loses
~sqrt(eps) ||q|| to cancellation), and the k neighbours are re-sorted by (exact distance, index).
Ties: the smaller reference index first. A near tie within the GEMM form's rounding may rank
differently on the two paths.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from diffmem.errors import InputError
from diffmem.metrics import distances

__all__ = ["HOST_WORK", "Neighbours", "tiles", "nearest", "exact", "Similar", "most_similar"]

HOST_WORK = 2 * 10**9  # multiply-adds below which the ranking is done on the host (no compile)
_BLOCK = 1024          # query rows per host GEMM / per exact recomputation


class Neighbours(NamedTuple):
    """The k nearest references of each query: `distances` unsquared L2 (float64, ascending) and
    `indices` (int64 rows of the references); each (N, k) for N queries, (k,) for one query."""
    distances: np.ndarray
    indices: np.ndarray


def tiles(n: int, m: int) -> dict:
    """`distances.knn` tiles no larger than needed (it pads to whole tiles) for n queries and m
    references: powers of two up to 512 x 2048."""
    pow2 = lambda v, cap: min(cap, 1 << max(0, int(v) - 1).bit_length())  # noqa: E731
    return dict(query_tile=pow2(n, 512), ref_tile=pow2(m, 2048))


def nearest(queries, references, k: int = 1, *, exclude_self: bool = False, mesh=None,
            host_work: int | None = None) -> Neighbours:
    """The k nearest `references` of each query by unsquared L2 distance, exact in float64.

    Args:
      queries: one example of shape F, or a batch (N, *F).
      references: (M, *F); rows are flattened to D = prod(F) features.
      k: neighbours per query, 1 <= k <= M (M - 1 with exclude_self).
      exclude_self: query i is reference i (the queries are the first rows of the references, e.g.
        the same array) and is never its own neighbour (excluded by index; an exact duplicate
        elsewhere still counts, at distance 0). Batches only.
      mesh: shard the k-NN's queries over this device mesh (`distances.knn`); forces the engine.
      host_work: N * M * D at or below which the ranking runs on the host in float64 (default
        `HOST_WORK`; 0: always the tiled engine).
    Returns:
      Neighbours(distances, indices): (N, k) float64 L2 distances, ascending, and (N, k) int64
      reference rows; (k,) each for one query.
    """
    refs = np.asarray(references)
    if refs.ndim < 1 or len(refs) == 0:
        raise InputError("references must be a non-empty (M, *F) array; got shape "
                         f"{np.shape(refs)}.")
    feat = tuple(refs.shape[1:])
    q_shape = tuple(np.shape(queries))
    if q_shape == feat:
        single = True
    elif len(q_shape) == len(feat) + 1 and q_shape[1:] == feat and q_shape[0] > 0:
        single = False
    else:
        raise InputError(f"queries must be one example of shape {feat} or a batch of shape "
                         f"(N, *{feat}) like the references {tuple(refs.shape)}; got shape "
                         f"{q_shape}.")
    if single and exclude_self:
        raise InputError("exclude_self needs a batch of queries (query i is reference i).")
    q = np.asarray(queries).reshape(1 if single else q_shape[0], -1)
    r = np.asarray(refs).reshape(len(refs), -1)
    n, m = len(q), len(r)
    if exclude_self and n > m:
        raise InputError(f"exclude_self: query i is reference i, so the {n} queries need >= {n} "
                         f"references; got {m}.")
    candidates = m - 1 if exclude_self else m
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= candidates:
        raise InputError(f"k = {k} must be an integer in [1, {candidates}] ({m} references"
                         f"{', self excluded' if exclude_self else ''}).")
    if not (np.isfinite(q).all() and np.isfinite(r).all()):
        raise InputError("queries or references contain NaN or infinite values; distances would be "
                         "meaningless.")
    host_work = HOST_WORK if host_work is None else host_work
    if mesh is None and n * m * q.shape[1] <= host_work:
        idx = _rank_host(q, r, int(k), exclude_self)
    else:
        offset = 0 if exclude_self else None
        _, idx = distances.knn(q, r, int(k), exclude_self_offset=offset, mesh=mesh, **tiles(n, m))
    d = exact(q, r, idx)
    order = np.lexsort((idx, d), axis=1)
    d, idx = np.take_along_axis(d, order, 1), np.take_along_axis(idx, order, 1)
    return Neighbours(d[0], idx[0]) if single else Neighbours(d, idx)


def exact(queries: np.ndarray, references: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """||queries[n] - references[indices[n, j]]|| in float64, (N, k), computed directly; inf where
    an index is -1. queries (N, D), references (M, D), indices (N, k)."""
    idx = np.asarray(indices, np.int64)
    out = np.full(idx.shape, np.inf)
    for s in range(0, len(queries), _BLOCK):
        j = idx[s:s + _BLOCK]
        ok = j >= 0
        rows = np.nonzero(ok)[0]
        diff = queries[s:s + _BLOCK][rows].astype(np.float64) - references[j[ok]].astype(np.float64)
        out[s:s + _BLOCK][ok] = np.sqrt(np.sum(diff * diff, axis=1))
    return out


def _rank_host(q: np.ndarray, r: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """(N, k) indices of the nearest references by float64 GEMMs over blocks of queries, ties by the
    smaller index (as `distances.knn`)."""
    r64 = r.astype(np.float64)
    r2 = np.sum(r64 * r64, axis=1)
    out = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), _BLOCK):
        qb = q[s:s + _BLOCK].astype(np.float64)
        d = r2[None] - 2 * qb @ r64.T  # + ||q||^2, constant per row
        if exclude_self:
            rows = np.arange(len(qb))
            d[rows, rows + s] = np.inf
        if k == 1:
            out[s:s + len(qb), 0] = np.argmin(d, axis=1)
        else:
            out[s:s + len(qb)] = np.argsort(d, axis=1, kind="stable")[:, :k]
    return out


class Similar(NamedTuple):
    """The most cosine-similar reference of each query: `cosines` (N,) float64 and `indices` (N,)
    int64 rows of the references."""
    cosines: np.ndarray
    indices: np.ndarray


def most_similar(queries, references, *, mesh=None, host_work: int | None = None) -> Similar:
    """The reference row of largest cosine similarity to each query row (rows flattened), exact.

    For unit vectors ||q - r||^2 = 2 - 2 cos(q, r), so this is `nearest` on the normalized rows;
    the winner's cosine is then recomputed directly in float64. A row of zero norm has cosine 0 with
    every row (as `disjoint.im_set_corr` and `reproducibility.normalize` define it). Ties: the
    smaller reference index.

    Args:
      queries: (N, *F); references: (M, *F), M >= 1.
      mesh, host_work: as in `nearest`.
    Returns:
      Similar(cosines (N,) float64 in [-1, 1], indices (N,) int64).
    """
    q = np.asarray(queries, np.float64)
    r = np.asarray(references, np.float64)
    if q.ndim < 1 or r.ndim < 1 or len(r) == 0 or q.shape[1:] != r.shape[1:]:
        raise InputError(f"queries (N, *F) and references (M, *F) need the same F and M >= 1; got "
                         f"{q.shape} and {r.shape}.")
    q, r = q.reshape(len(q), -1), r.reshape(len(r), -1)
    qn, rn = np.linalg.norm(q, axis=1), np.linalg.norm(r, axis=1)
    q = q / np.where(qn > 0, qn, 1.0)[:, None]
    r = r / np.where(rn > 0, rn, 1.0)[:, None]
    cos, idx = np.zeros(len(q)), np.zeros(len(q), np.int64)  # zero-norm queries: cosine 0, index 0
    live_r, live_q = np.flatnonzero(rn > 0), np.flatnonzero(qn > 0)
    if len(live_r) and len(live_q):
        found = nearest(q[live_q], r[live_r], 1, mesh=mesh, host_work=host_work).indices[:, 0]
        idx[live_q] = live_r[found]
        cos[live_q] = np.sum(q[live_q] * r[idx[live_q]], axis=1)
    zero_r = np.flatnonzero(rn == 0)
    if len(zero_r):  # a zero reference (cosine 0) beats a negative best; ties: the first index
        beaten = (cos < 0) | ((cos == 0) & (zero_r[0] < idx))
        beaten &= qn > 0
        cos[beaten], idx[beaten] = 0.0, zero_r[0]
    return Similar(cos, idx)
