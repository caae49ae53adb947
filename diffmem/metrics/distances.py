"""Exact k nearest neighbours by tiled GEMMs with a running top-k, in pixel space or any feature
space.

For queries a_i (N, D) and references b_j (M, D) the squared Euclidean distance is
||a_i||^2 + ||b_j||^2 - 2 a_i.b_j (float32 accumulation, clamped at 0). References are visited in
tiles of
`ref_tile` rows and queries in tiles of `query_tile` rows; each (query tile, reference tile) block
is one GEMM whose distances are merged into a running top-k with `lax.top_k` on [current best |
block]. Memory is bounded by one query_tile x ref_tile block: no N x M matrix is ever formed.

Results are *exact* k-NN in the order of brute force with a stable sort: ascending distance, ties
broken by the smaller reference index. They are also bit-identical however the work is split,
because every block has the same shape whatever the split (queries and references are padded to
whole tiles):
  * across devices: `mesh` shards the queries over all axes of a `jax.sharding.Mesh` (references are
    replicated on every device);
  * across jobs over queries: `start/stop` compute rows [start, stop); `merge_knn` concatenates
    them;
  * across jobs over references: `ref_start` says where the given references sit in the full set
    (returned indices are global); `merge_knn_refs` combines the top-k of disjoint reference ranges.
Use the same `query_tile`/`ref_tile` in all parts of a split computation.

A sample's nearest *other* sample: pass the samples as both queries and references with
`exclude_self_offset=0`; the query with global index i is then excluded as reference i + offset *by
index* (an exact duplicate elsewhere still counts, at distance 0).
"""
from __future__ import annotations

import functools
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffmem import multihost
from diffmem.errors import InputError

__all__ = ["HIGHEST", "knn", "SquaredDistances", "require_unsquared", "query_range",
           "num_candidates", "merge_knn", "merge_knn_refs"]

HIGHEST = jax.lax.Precision.HIGHEST


def knn(queries, refs, k: int, *, start: int = 0, stop: int | None = None,
        exclude_self_offset: int | None = None, ref_start: int = 0, query_tile: int = 512,
        ref_tile: int = 2048, mesh: Mesh | None = None,
        precision=HIGHEST) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest references of queries[start:stop] by squared Euclidean distance.

    Args:
      queries: (N, *F) array; rows are flattened to D = prod(F) features. Only rows [start, stop)
        are computed, but indices are global so separate jobs can split one query set.
      refs: (M, *F) references: global reference indices ref_start .. ref_start + M - 1. k:
      neighbours per query, 1 <= k <= M. A query with fewer candidates (its own index excluded) gets
        (inf, -1) in its last column; `num_candidates` gives the largest k without such padding.
      start, stop: the query rows to compute (stop=None: to the end). exclude_self_offset: if not
      None, query i (global) is reference i + offset and is never its own
        neighbour (excluded by index). Use 0 for samples against the same samples.
      ref_start: global index of refs[0], for jobs split over the reference set. query_tile,
      ref_tile: rows per block; memory ~ query_tile * ref_tile floats per device. Keep them equal
        across the parts of a split computation so the parts merge to the bit-identical unsplit
        result.
      mesh: shard the queries over all axes of this device mesh (references replicated); None: one
      device.
        A mesh may span several jax.distributed processes: all of them call `knn` with the same
        inputs and all get the full result.
      precision: matmul precision (HIGHEST keeps float32 GEMMs exact-float32 on GPUs/TPUs too).
    Returns:
      (dists, idx), host numpy arrays of shape (stop - start, k): *squared* Euclidean distances
      (float32, ascending, a `SquaredDistances` array; for exact unsquared L2 use
      `neighbours.nearest`) and global reference indices (int64), ties ordered by smaller index.
    """
    q, r = _rows(queries), _rows(refs)  # numpy inputs stay numpy until the one transfer below
    dtype = jax.dtypes.canonicalize_dtype(
        np.promote_types(np.promote_types(q.dtype, r.dtype), np.float32)
    )
    q, r = (x if x.dtype == dtype else x.astype(dtype) for x in (q, r))
    n_all, m = q.shape[0], r.shape[0]
    start, stop = query_range(n_all, start, stop)
    _validate(q[start:stop], r, k, query_tile, ref_tile)

    n = stop - start
    shards = 1 if mesh is None else mesh.size
    n_pad = -(-n // (shards * query_tile)) * shards * query_tile
    q = _pad_rows(q[start:stop], n_pad)
    qidx = np.pad(np.arange(start, stop, dtype=np.int32), (0, n_pad - n), constant_values=-1)
    if m < ref_tile:  # one whole tile: pad with rows that are masked out
        r = _pad_rows(r, ref_tile)

    run = _compiled(mesh, int(k), query_tile, ref_tile, precision)
    exclude = exclude_self_offset is not None
    scalars = [jnp.int32(m), jnp.int32(ref_start), jnp.bool_(exclude),
               jnp.int32(exclude_self_offset or 0)]
    if mesh is not None:
        rows = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
        everywhere = NamedSharding(mesh, PartitionSpec())
        q, qidx = jax.device_put(q, rows), jax.device_put(qidx, rows)
        r = jax.device_put(r, everywhere)
        scalars = [jax.device_put(x, everywhere) for x in scalars]
    dists, idx = run(q, qidx, r, *scalars)
    # all-gathered over jax.distributed processes
    dists, idx = multihost.to_host(dists), multihost.to_host(idx)
    return np.asarray(dists[:n]).view(SquaredDistances), idx[:n].astype(np.int64)


class SquaredDistances(np.ndarray):
    """The *squared* distances `knn` returns, marked so that the metrics that take unsquared L2
    distances (`classify.classify`, `memorization.is_memorized`, ...) refuse them
    (`require_unsquared`). Views and slices keep the mark; any arithmetic (np.sqrt(d), d + 0, ...)
    gives a plain ndarray."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = lambda x: x.view(np.ndarray) if isinstance(x, SquaredDistances) else x  # noqa: E731
        if "out" in kwargs:
            kwargs["out"] = tuple(plain(x) for x in kwargs["out"])
        return getattr(ufunc, method)(*(plain(x) for x in inputs), **kwargs)


def require_unsquared(**arrays) -> None:
    """Raise InputError if any of the named arrays are `knn`'s squared distances."""
    for name, x in arrays.items():
        if isinstance(x, SquaredDistances):
            raise InputError(f"{name} holds squared distances from distances.knn, but unsquared "
                             "L2 distances are needed: use diffmem.metrics.neighbours.nearest (or "
                             "np.sqrt the squares).")


def query_range(n: int, start: int = 0, stop: int | None = None) -> tuple[int, int]:
    """Validated query rows [start, stop) of a set of n (stop=None means n)."""
    stop = n if stop is None else stop
    if not (0 <= start < stop <= n):
        raise InputError(
            f"Query range [{start}, {stop}) is not a non-empty range inside [0, {n}): use "
            f"0 <= start < stop <= {n} (stop=None for the end)."
        )
    return int(start), int(stop)


def num_candidates(m: int, *, start: int, stop: int, exclude_self_offset: int | None = None,
                   ref_start: int = 0) -> int:
    """The largest valid k for queries [start, stop) against references [ref_start, ref_start + m):
    m, or m - 1 when some query's own index (i + exclude_self_offset) falls in the reference
    range."""
    if exclude_self_offset is None:
        return m
    lo, hi = start + exclude_self_offset, stop + exclude_self_offset
    return m - 1 if max(lo, ref_start) < min(hi, ref_start + m) else m


def merge_knn(parts: Iterable[tuple[int, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate k-NN results of consecutive query ranges (separate jobs) into the unsplit result.

    Args:
      parts: (start, dists (n_p, k), idx (n_p, k)) per job, in any order; together they must cover
        query rows [0, N) exactly once.
    Returns:
      (dists (N, k), idx (N, k)), identical to one `knn` call over all queries.
    """
    parts = sorted(
        ((int(s), np.asarray(d), np.asarray(i)) for s, d, i in parts), key=lambda p: p[0]
    )
    if not parts:
        raise InputError("merge_knn needs at least one part.")
    expected, ks = 0, {p[1].shape[1] for p in parts}
    if len(ks) != 1:
        raise InputError(
            f"Parts have different k: {sorted(ks)}; merge results computed with the same k."
        )
    for s, d, i in parts:
        if d.shape != i.shape or d.ndim != 2:
            raise InputError(
                f"Part at {s}: dists {d.shape} and idx {i.shape} must be equal (n, k) shapes."
            )
        if s != expected:
            what = "a gap" if s > expected else "an overlap"
            raise InputError(
                f"Query ranges leave {what} at row {min(s, expected)}: a part starts at {s} but "
                f"the "
                f"previous parts end at {expected}. Parts must cover [0, N) exactly once."
            )
        expected = s + len(d)
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def merge_knn_refs(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Combine the k-NN of the same queries over disjoint reference ranges (`knn(...,
    ref_start=...)`).

    The unsplit top-k is contained in the union of the parts' top-k, so re-selecting by (distance,
    index) gives exactly the unsplit result.

    Args:
      parts: (dists (n, k_p), idx (n, k_p)) per reference range, with global indices.
      k: neighbours to keep (default: the parts' k); at most the total number of candidates.
    Returns:
      (dists (n, k), idx (n, k)) sorted by distance, ties by smaller index ((inf, -1) entries last).
    """
    if not parts:
        raise InputError("merge_knn_refs needs at least one part.")
    dists = np.concatenate([np.asarray(d) for d, _ in parts], axis=1)
    idx = np.concatenate([np.asarray(i) for _, i in parts], axis=1).astype(np.int64)
    if dists.shape != idx.shape or len({np.asarray(d).shape[0] for d, _ in parts}) != 1:
        raise InputError(
            "All parts must hold the same queries, with dists and idx of equal (n, k) shapes."
        )
    k = np.asarray(parts[0][0]).shape[1] if k is None else k
    if not 1 <= k <= dists.shape[1]:
        raise InputError(f"k = {k} but the parts hold only {dists.shape[1]} candidates per query.")
    s = np.sort(idx, axis=1)
    # -1 marks "no candidate", not a reference
    if np.any((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)):
        raise InputError(
            "A reference index appears in two parts: the reference ranges must be disjoint."
        )
    order = np.lexsort((idx, dists), axis=1)[:, :k]
    return np.take_along_axis(dists, order, 1), np.take_along_axis(idx, order, 1)


def _validate(q, r, k, query_tile, ref_tile):
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise InputError(
            f"Queries and references must have the same features per row; got {q.shape[1:]} "
            f"and {r.shape[1:]} after flattening."
        )
    if query_tile < 1 or ref_tile < 1:
        raise InputError(
            f"Tile sizes must be positive; got query_tile={query_tile}, ref_tile={ref_tile}."
        )
    m = r.shape[0]
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= m:
        raise InputError(f"k = {k} must be an integer in [1, {m}] (the number of references).")
    for name, x in (("queries", q), ("refs", r)):
        finite = jnp.isfinite(x).all() if isinstance(x, jax.Array) else np.isfinite(x).all()
        if not bool(finite):
            raise InputError(
                f"{name} contain NaN or infinite values; distances would be meaningless."
            )


def _rows(x):
    """(N, *F) -> (N, D), as a jax array if it is one, else numpy."""
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    return x.reshape(x.shape[0], -1)


def _pad_rows(x, n: int):
    xp = jnp if isinstance(x, jax.Array) else np
    return x if len(x) == n else xp.pad(x, ((0, n - len(x)), (0, 0)))


@functools.lru_cache(maxsize=64)
def _compiled(mesh, k, bq, bt, precision):
    """The jitted (and, with a mesh, shard_mapped) block loop for one set of static settings."""
    local = functools.partial(_knn_local, k=k, bq=bq, bt=bt, precision=precision)
    if mesh is None:
        return jax.jit(local)
    rows, everywhere = PartitionSpec(mesh.axis_names), PartitionSpec()
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(rows, rows) + (everywhere,) * 5,
                                 out_specs=(rows, rows), check_vma=False))


def _knn_local(q, qidx, refs, m_valid, ref_start, exclude, offset, *, k, bq, bt, precision):
    """One device's k-NN: q (n, D) with n a multiple of bq, qidx (n,) global query index (-1 =
    padding), refs (M_pad, D) with M_pad >= bt of which the first m_valid are real (ref_start:
    global index of refs[0]; with `exclude`, query i is reference i + offset). Loops over reference
    tiles (outer, so each tile is sliced once) and query tiles (inner); returns (n, k) squared
    distances and global indices."""
    n, m_pad = q.shape[0], refs.shape[0]
    n_ref_tiles = (m_valid + bt - 1) // bt

    def ref_step(t, best):
        # The last tile is clamped to end at m_pad; columns already seen in the previous tile are
        # masked.
        s = jnp.minimum(t * bt, m_pad - bt)
        r = jax.lax.dynamic_slice_in_dim(refs, s, bt)
        r_sq = jnp.sum(r * r, axis=1)
        local = s + jnp.arange(bt, dtype=jnp.int32)
        global_idx = local + ref_start
        unusable = (local < t * bt) | (local >= m_valid)

        def query_step(u, best):
            best_d, best_i = best
            qs = u * bq
            qt = jax.lax.dynamic_slice_in_dim(q, qs, bq)
            qi = jax.lax.dynamic_slice_in_dim(qidx, qs, bq)
            gram = jax.lax.dot_general(qt, r, (((1,), (1,)), ((), ())), precision=precision)
            d = jnp.sum(qt * qt, axis=1)[:, None] + r_sq[None, :] - 2.0 * gram
            # clamp; also turns -0.0 into +0.0 so zero ties sort by index
            d = jnp.where(d > 0, d, 0.0)
            is_self = exclude & (global_idx[None, :] == qi[:, None] + offset)
            d = jnp.where(unusable[None, :] | is_self, jnp.inf, d)
            # Current best first: its indices are all smaller than this tile's, and top_k keeps the
            # lower position first among equal values, so ties resolve by smaller reference index.
            cur_d = jax.lax.dynamic_slice_in_dim(best_d, qs, bq)
            cur_i = jax.lax.dynamic_slice_in_dim(best_i, qs, bq)
            neg_d, pos = jax.lax.top_k(-jnp.concatenate([cur_d, d], axis=1), k)
            # Position p < k is the current best's p-th entry, otherwise this tile's column p - k.
            new_i = jnp.where(pos < k, jnp.take_along_axis(cur_i, jnp.minimum(pos, k - 1), axis=1),
                              pos - k + s + ref_start)
            return (jax.lax.dynamic_update_slice_in_dim(best_d, -neg_d, qs, 0),
                    jax.lax.dynamic_update_slice_in_dim(best_i, new_i, qs, 0))

        return jax.lax.fori_loop(0, n // bq, query_step, best)

    init = (jnp.full((n, k), jnp.inf, q.dtype), jnp.full((n, k), -1, jnp.int32))
    return jax.lax.fori_loop(0, n_ref_tiles, ref_step, init)
