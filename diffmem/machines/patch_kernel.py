"""The one streamed patch log-sum-exp kernel every analytic machine runs on, and patch extraction.

For query rows q_gb (group g, row b) and reference rows p_gn streamed in chunks, the kernel returns

    lse_gb  = log sum_n exp(-||q_gb - p_gn||_w^2 * inv_var_gb / 2)          (over allowed pairs)
    mean_gb = sum_n softmax_n(...) v_gn                       (values v: centres or patches)

with ||u||_w^2 = sum_d w_d u_d^2 (w a per-query precision vector, default all ones; hard masks are
0/1). The squared distance is a GEMM: ||q||^2 - 2 q.p + ||p||^2 (with w: sum w q^2 - 2 (w q).p +
w.p^2), the logits of a chunk come out of one GEMM of augmented rows and the weighted sums out of a
second; with patches of k^2 C >= ~50 numbers that is GEMM speed, with smaller ones the exp of every
logit costs more than the GEMM (bench/bench_patch_kernel.py). A running maximum per query row (never
over the batch) keeps the sums finite where one shared maximum would underflow for some rows. Memory
is bounded by one block of query rows times one chunk of references (about DEFAULT_LOGITS logits,
sized to stay in cache) and one chunk of references: the full query x reference matrix is never
formed. Groups g are independent problems solved in one batched GEMM: one group with many rows (ELS:
every pixel of every example against every patch), or one group per image position (LS, PSPC: the
references at the same location).

Which pairs count is said by integer tags: a reference row with tag < 0 is padding (ignored); with
`query_tags` given, a pair counts only where the tags are equal (classes of rows and references in
one group).
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["ChunkFn", "stream_patch_lse", "PAD_PENALTY", "VECTOR_WIDTH_ENV", "compiler_options",
           "patches", "centred_patches", "fold", "chunked", "DEFAULT_LOGITS", "block_rows",
           "even_blocks", "MIN_REFS_PER_DEPTH", "images_per_chunk"]

ChunkFn = Callable[[jax.Array], tuple]
"""chunk(item) -> (refs (Gr, n, D), values (Gr, n, V), tags (Gr, n) int), Gr in {1, G}: one chunk of
references made from one item of the scanned inputs (e.g. a chunk of training images), so only a
chunk is ever in memory."""


def stream_patch_lse(queries: jax.Array, inv_var: jax.Array, chunk: ChunkFn, items, *,
                     weights: jax.Array | None = None, query_tags: jax.Array | None = None,
                     row_block: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(lse (G, B), mean (G, B, V)) for queries (G, B, D), inv_var (G|1, B) and the chunks
    `chunk(item)` for each item along the leading axis of the pytree `items` (scanned with
    lax.scan).

    weights: optional (G|1, B|1, D) per-query precision vector; query_tags: optional (G, B) int
    (pairs count only where a reference's tag equals the query's). A query row with no allowed
    reference gets lse = -inf and mean 0. row_block: most query rows per pass over the references
    (None: as many as keep G x rows x chunk near DEFAULT_LOGITS, so the logits of a chunk stay in
    cache); the rows run in that many blocks of equal size (`even_blocks`), one after another
    (lax.map).
    """
    g, b, _ = queries.shape
    inv_var = jnp.broadcast_to(jnp.asarray(inv_var, queries.dtype), (g, b))
    n = jax.eval_shape(chunk, jax.tree.map(lambda a: a[0], items))[0].shape[1]
    rb = even_blocks(b, block_rows(g, n) if row_block is None else int(row_block))
    if rb >= b:
        return _stream(queries, inv_var, chunk, items, weights, query_tags)
    nb = -(-b // rb)
    pad = lambda a: (
        None if a is None else jnp.pad(a, [(0, 0), (0, nb * rb - b)] + [(0, 0)] * (a.ndim - 2))
    )
    split = lambda a: (
        None
        if a is None
        else jnp.moveaxis(pad(a).reshape((a.shape[0], nb, rb) + a.shape[2:]), 1, 0)
    )
    per_row_w = weights is not None and weights.shape[1] != 1
    blocks = (split(queries), split(inv_var), split(weights) if per_row_w else None,
              split(query_tags))

    def one(block):
        q, iv, w, tags = block
        return _stream(q, iv, chunk, items, w if per_row_w else weights, tags)
    lse, mean = jax.lax.map(one, blocks)
    unsplit = lambda a: jnp.moveaxis(a, 0, 1).reshape((g, nb * rb) + a.shape[3:])[:, :b]
    return unsplit(lse), unsplit(mean)


def _stream(queries, inv_var, chunk, items, weights, query_tags):
    """`stream_patch_lse` for one block of rows: the scan over reference chunks.

    The logits come out of one GEMM of augmented rows, inv_var * (q.p - |p|^2 / 2) = q'.p' with q' =
    [iv q, -iv/2] and p' = [p, |p|^2 + PAD] (with weights: q' = [iv w q, -iv w / 2, -iv/2], p' = [p,
    p^2, PAD]),
    PAD = 0 for real references and PAD_PENALTY for padding; the softmax sum and the weighted values
        come out of
    a second, [v, 1]. The -iv |q|^2 / 2 of each row is added once at the end."""
    dtype = queries.dtype
    g, b, _ = queries.shape
    iv = inv_var[..., None]
    if weights is None:
        qsq = jnp.sum(queries * queries, axis=-1)
        q_aug = jnp.concatenate([iv * queries, -0.5 * iv], axis=-1)
    else:
        w = jnp.broadcast_to(jnp.asarray(weights, dtype), queries.shape)
        qsq = jnp.sum(w * queries * queries, axis=-1)
        q_aug = jnp.concatenate([iv * w * queries, -0.5 * iv * w, -0.5 * iv], axis=-1)

    def body(carry, item):
        m, acc = carry
        refs, values, tags = chunk(item)
        refs = refs.astype(dtype)
        pad = jnp.broadcast_to(jnp.where(tags >= 0, 0.0, PAD_PENALTY).astype(dtype)[..., None],
                               refs.shape[:-1] + (1,))                                # (Gr, n, 1)
        if weights is None:
            p_aug = jnp.concatenate(
                [refs, jnp.sum(refs * refs, axis=-1, keepdims=True) + pad], axis=-1
            )
        else:
            p_aug = jnp.concatenate([refs, refs * refs, pad], axis=-1)
        logits = _gemm(q_aug, p_aug)                                                  # (G, B, n)
        if query_tags is not None:
            ok = tags[:, None, :] == query_tags[..., None]
            logits = jnp.where(ok, logits, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        scale = jnp.where(jnp.isfinite(m), jnp.exp(m - safe), 0.0)
        p = jnp.exp(logits - safe[..., None])
        v_aug = jnp.concatenate(
            [values.astype(dtype), jnp.ones(values.shape[:-1] + (1,), dtype)], axis=-1
        )
        # [sum p v, sum p]
        acc = acc * scale[..., None] + _gemm(p, jnp.swapaxes(v_aug, 1, 2))
        return (m_new, acc), None

    v = jax.eval_shape(chunk, jax.tree.map(lambda a: a[0], items))[1].shape[-1]
    init = (jnp.full((g, b), -jnp.inf, dtype), jnp.zeros((g, b, v + 1), dtype))
    (m, acc), _ = jax.lax.scan(body, init, items)
    s = acc[..., -1]
    lse = m + jnp.log(s) - 0.5 * qsq * inv_var
    return lse, acc[..., :-1] / jnp.where(s > 0, s, 1.0)[..., None]


PAD_PENALTY = 1e30
"""Added to |p|^2 of padding references: their logits (-iv PAD / 2) underflow to weight 0 for any
sigma in [1e-12, 1e12]."""


def _gemm(a: jax.Array, r: jax.Array) -> jax.Array:
    """a (G, B, D) times r (Gr, n, D) transposed -> (G, B, n): one plain GEMM over all G*B rows when
    the references are shared (Gr = 1), else G batched GEMMs."""
    g, b, d = a.shape
    if r.shape[0] == 1:
        return (a.reshape(g * b, d) @ r[0].T).reshape(g, b, r.shape[1])
    return jnp.einsum("gbd,gnd->gbn", a, r)


# ------------------------------------------------------------------------------- compiler options
VECTOR_WIDTH_ENV = "DIFFMEM_CPU_VECTOR_WIDTH"
"""Environment variable overriding the vector width `compiler_options` asks for (e.g. 256: XLA's CPU
default; 0: no option at all)."""


def compiler_options() -> dict:
    """XLA options for the programs that run this kernel (the machines' `jax.jit`s; pass them to a
    `jax.jit` of your own around a machine): on a CPU backend whose host has AVX-512, 512-bit
    vectors.

    XLA's CPU default, 256-bit vectors, leaves half of each AVX-512 register idle in the exp of
    every logit, which is what the kernel spends most of its time on with patches of k^2 C < 50
    numbers: the 512-bit program computes the exps 1.9x as fast and the whole kernel 1.1-1.3x
    (bench/bench_patch_kernel.py prints both side by side). Results differ from the default program
    only by float32 rounding. Empty (XLA's defaults) on other backends and hosts, or with
    DIFFMEM_CPU_VECTOR_WIDTH=0."""
    width = os.environ.get(VECTOR_WIDTH_ENV)
    if width is not None:
        return (
            {"xla_cpu_prefer_vector_width": int(width)} if int(width) > 0 and _cpu_backend() else {}
        )
    return {"xla_cpu_prefer_vector_width": 512} if _cpu_backend() and _host_has_avx512() else {}


def _cpu_backend() -> bool:
    return jax.default_backend() == "cpu"


@functools.lru_cache(maxsize=1)
def _host_has_avx512() -> bool:
    """Whether /proc/cpuinfo lists avx512f (Linux x86); False where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


# ------------------------------------------------------------------------------------------ patches
def patches(images: jax.Array, kh: int, kw: int) -> jax.Array:
    """All kh x kw windows fully inside images (N, H, W, C): (N, H - kh + 1, W - kw + 1, kh * kw *
    C), features ordered (row in window, column in window, channel); window (i, j) has its
    upper-left corner at (i, j)."""
    n, h, w, c = images.shape
    oh, ow = h - kh + 1, w - kw + 1
    cols = [images[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)]
    return jnp.stack(cols, axis=3).reshape(n, oh, ow, kh * kw * c)


def centred_patches(images: jax.Array, k: int, mode: str) -> jax.Array:
    """The k x k patch centred at every pixel (k odd): (N, H, W, k * k * C), images padded by k // 2
    with zeros (mode "zeros") or circularly (mode "circular")."""
    r = k // 2
    pad = ((0, 0), (r, r), (r, r), (0, 0))
    padded = jnp.pad(images, pad, mode="wrap" if mode == "circular" else "constant")
    return patches(padded, k, k)


def fold(windows: jax.Array, shape: tuple, kh: int, kw: int) -> jax.Array:
    """The adjoint of `patches`: each window (N, H', W', kh*kw*C) added back at its place in an (N,
    H, W, C) image (overlap-add)."""
    zeros = jnp.zeros(shape, windows.dtype)
    _, adjoint = jax.vjp(lambda im: patches(im, kh, kw), zeros)
    return adjoint(windows)[0]


def chunked(array: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """array (N, ...) as (num, size, ...) zero-padded chunks and a validity mask (num, size)."""
    n = array.shape[0]
    size = max(1, min(int(size), n))
    num = -(-n // size)
    pad = num * size - n
    padded = jnp.pad(array, ((0, pad),) + ((0, 0),) * (array.ndim - 1))
    valid = jnp.arange(num * size) < n
    return padded.reshape((num, size) + array.shape[1:]), valid.reshape(num, size)


# logits per chunk (rows x references): 4 MB in float32, so a chunk stays in cache
DEFAULT_LOGITS = 1 << 20


def block_rows(groups: int, refs: int) -> int:
    """Query rows per pass of the kernel (`stream_patch_lse` with row_block None): groups x rows x
    refs logits near DEFAULT_LOGITS."""
    return max(1, DEFAULT_LOGITS // max(1, groups * refs))


def even_blocks(rows: int, most: int) -> int:
    """Rows per block when `rows` run in blocks of at most `most`: as many blocks as that takes, of
    equal size, so the padding of the last block is under one row per block (6,272 rows in blocks of
    at most 2,621: three of 2,091, not three of 2,621 with 1,591 padding rows computed for
    nothing)."""
    most = max(1, int(most))
    if most >= rows:
        return rows
    blocks = -(-rows // most)
    return -(-rows // blocks)


MIN_REFS_PER_DEPTH = 8
"""Reference rows per chunk at least this many times the patch depth D (where `images_per_chunk`
chooses): each chunk's GEMM reads its (rows x D) queries again, and with D = 81 (FMNIST, k = 9) one
400-patch image per chunk made that read, not the logits, the cost (bench_patch_kernel: 2.2 s ->
1.65 s with two images per chunk)."""


def images_per_chunk(rows: int, refs_per_image: int, chunk: int | None, depth: int = 0) -> int:
    """Training images per chunk: `chunk` if given, else as many as keep rows x references near
    DEFAULT_LOGITS, and at least MIN_REFS_PER_DEPTH x `depth` references (the rows then run in
    smaller blocks)."""
    if chunk is not None:
        return max(1, int(chunk))
    fit = DEFAULT_LOGITS // max(1, rows * refs_per_image)
    wide = -(-MIN_REFS_PER_DEPTH * int(depth) // max(1, refs_per_image))
    return max(1, fit, wide)
