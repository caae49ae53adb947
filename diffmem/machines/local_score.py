"""Analytic denoisers of a training set on the one patch kernel: ideal (IS), local (LS), equivariant
local (ELS), boundary-broken ELS (Kamb & Ganguli 2025) and the patch-set posterior composites
PSPC-square and PSPC-flex (Niedoba et al. 2025).

Every machine is a denoiser D(x (B, H, W, C), sigma (B,)) -> (B, H, W, C) in diffmem's VE view, x =
x0 + sigma n. The papers' processes x_t = a_t x0 + b_t eps are the same with x = x_t / a_t and sigma
= b_t / a_t: their weights exp(-||P(x_t) - a_t P(y)||^2 / (2 b_t^2)) are exp(-||P(x) - P(y)||^2 / (2
sigma^2)), and their score s gives D = (x_t + b_t^2 s) / a_t. Below, y_n are the training images,
P(.)_hw the k x k patch centred at pixel (h, w) (k odd), r = k // 2, and every weight is a softmax
over the references of one query pixel:

  ideal   w_n  ~ exp(-||x - y_n||^2 / 2 s^2)                 D_hw = sum_n w_n y_n[h, w]
          (= energy.empirical_denoiser)
  ls      w_n  ~ exp(-||P(x)_hw - P(y_n)_hw||^2 / 2 s^2)      D_hw = sum_n w_n y_n[h, w]
          (zero padding)
  els     w_p  ~ exp(-||P(x)_hw - p||^2 / 2 s^2)              D_hw = sum_p w_p p_centre
          over every patch p fully inside every training image; x padded circularly
  bbels   as els for pixels >= r from every edge; a pixel within r of an edge is compared only with
          the (zero-padded) training patches of the same border class: same offset from that edge,
          any interior position along it; corners: the same position only. k >= H or W: ls (as
          upstream).
  pspc_square  for each k x k window C inside the image (no padding): m_C = sum_n w_n y_n[C],
          w_n ~ exp(-||x_C - y_n[C]||^2 / 2 s^2); D = (sum_C uncrop(m_C)) / (number of windows
          covering a pixel)
  pspc_flex    the same with one mask C_hw per output pixel: the smallest pixel set holding >= tau
               of the
          pixel's normalised sensitivity heatmap (ascending sort; keep pixels whose cumulative mass
          >= 1 - tau), always holding the pixel itself (else an uncovered pixel would have no
          output).

Cost per query image: ideal N HWC; ls N HW k^2 C; els N (H-k+1)(W-k+1) HW k^2 C (the GEMM the bench
measures). `chunk` is the number of training images per streamed chunk (None: about DEFAULT_LOGITS
logits per chunk).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffmem.errors import InputError
from diffmem.machines import patch_kernel as pk

__all__ = ["PATCH_MACHINES", "ideal", "local", "equivariant", "border_classes", "boundary_broken",
           "pspc_square", "flex_masks", "pspc_flex"]

PATCH_MACHINES = ("ls", "els", "bbels", "pspc_square")
"""Machines whose schedule value is a patch size k."""


def _inv_var(sigma: jax.Array, dtype) -> jax.Array:
    return 1.0 / jnp.asarray(sigma, dtype) ** 2


def _images(train: jax.Array, rows: int, refs_per_image: int, chunk: int | None, depth: int = 0):
    """Scan items: (images (num, n, H, W, C), valid (num, n)) with n images per chunk
    (`images_per_chunk`)."""
    return pk.chunked(train, pk.images_per_chunk(rows, refs_per_image, chunk, depth))


def _tags(valid: jax.Array, per_image: int = 1, tag=0) -> jax.Array:
    """(1, n * per_image) tags: `tag` (scalar or (per_image,)) for real images, -1 for padding."""
    tags = jnp.broadcast_to(jnp.asarray(tag, jnp.int32), (valid.shape[0], per_image))
    return jnp.where(valid[:, None], tags, -1).reshape(1, -1)


def _check_odd(k: int, where: str) -> int:
    k = int(k)
    if k < 1 or k % 2 == 0:
        raise InputError(
            f"{where}: the patch size must be an odd integer >= 1 (a centred patch); got {k}."
        )
    return k


# ------------------------------------------------------------------------------------------- ideal
def ideal(train: jax.Array, x: jax.Array, sigma: jax.Array, chunk: int | None = None) -> jax.Array:
    """The ideal (empirical optimal) denoiser: one query per example, the whole image as the
    patch."""
    b = x.shape[0]
    q = x.reshape(1, b, -1)
    flat = jnp.reshape(train, (train.shape[0], -1))
    items = _images(flat, b, 1, chunk)

    def chunk_fn(item):
        y, valid = item
        return y[None], y[None], _tags(valid)
    _, mean = pk.stream_patch_lse(q, _inv_var(sigma, x.dtype)[None], chunk_fn, items)
    return mean.reshape(x.shape)


# ------------------------------------------------------------------------------------------- LS
def local(
    train: jax.Array, x: jax.Array, sigma: jax.Array, k: int, chunk: int | None = None
) -> jax.Array:
    """LS: each pixel's patch against the training patches at the same location (zero padding)."""
    k = _check_odd(k, "ls")
    b, h, w, c = x.shape
    # (HW, B, D)
    q = pk.centred_patches(x, k, "zeros").reshape(b, h * w, -1).transpose(1, 0, 2)
    items = _images(train, b * h * w, 1, chunk)

    def chunk_fn(item):
        y, valid = item
        n = y.shape[0]
        # (HW, n, D)
        refs = pk.centred_patches(y, k, "zeros").reshape(n, h * w, -1).transpose(1, 0, 2)
        return refs, y.reshape(n, h * w, c).transpose(1, 0, 2), _tags(valid)
    _, mean = pk.stream_patch_lse(q, _inv_var(sigma, x.dtype)[None], chunk_fn, items)
    return mean.transpose(1, 0, 2).reshape(x.shape)


# ------------------------------------------------------------------------------------------- ELS
def _valid_patch_chunks(train, k, rows, chunk):
    """Items and chunk function for every patch fully inside every training image (values: the
    centre pixel)."""
    _, h, w, c = train.shape
    r = k // 2
    per = (h - k + 1) * (w - k + 1)
    items = _images(train, rows, per, chunk, k * k * c)

    def chunk_fn(item):
        y, valid = item
        refs = pk.patches(y, k, k).reshape(1, -1, k * k * c)
        centres = y[:, r:h - r, r:w - r, :].reshape(1, -1, c)
        return refs, centres, _tags(valid, per)
    return items, chunk_fn


def equivariant(
    train: jax.Array, x: jax.Array, sigma: jax.Array, k: int, chunk: int | None = None
) -> jax.Array:
    """ELS: each pixel's circularly padded patch against every patch of every training image."""
    k = _check_odd(k, "els")
    b, h, w, c = x.shape
    if k > min(h, w):
        raise InputError(
            f"els: the patch size {k} exceeds the image ({h} x {w}); no training patch fits. Use "
            f"k <= {min(h, w)}, or bbels / ls, which fall back to the same-location comparison."
        )
    q = pk.centred_patches(x, k, "circular").reshape(1, b * h * w, -1)
    items, chunk_fn = _valid_patch_chunks(train, k, b * h * w, chunk)
    inv = jnp.repeat(_inv_var(sigma, x.dtype), h * w)[None]
    _, mean = pk.stream_patch_lse(q, inv, chunk_fn, items)
    return mean.reshape(x.shape)


def border_classes(h: int, w: int, k: int) -> np.ndarray:
    """(H, W) int class of each pixel for boundary-broken ELS: row class (offset from the top edge
    0..r-1, interior r, offset from the bottom edge r+1..2r) times (2r+1) plus the column class."""
    r = k // 2

    def axis(n):
        i = np.arange(n)
        return np.where(i < r, i, np.where(i >= n - r, r + 1 + i - (n - r), r))
    return axis(h)[:, None] * (2 * r + 1) + axis(w)[None, :]


def boundary_broken(
    train: jax.Array, x: jax.Array, sigma: jax.Array, k: int, chunk: int | None = None
) -> jax.Array:
    """bbELS: interior pixels as ELS (no padding needed), border pixels against the zero-padded
    training patches of their own border class."""
    k = _check_odd(k, "bbels")
    b, h, w, c = x.shape
    if k >= min(h, w):
        return local(train, x, sigma, k, chunk)
    r = k // 2
    if r == 0:  # 1 x 1 patches: no border
        return equivariant(train, x, sigma, k, chunk)
    inv = _inv_var(sigma, x.dtype)
    # interior: unpadded patches of x against every training patch
    qi = pk.patches(x, k, k)
    ih, iw = qi.shape[1:3]
    items, chunk_fn = _valid_patch_chunks(train, k, b * ih * iw, chunk)
    _, inner = pk.stream_patch_lse(
        qi.reshape(1, b * ih * iw, -1), jnp.repeat(inv, ih * iw)[None], chunk_fn, items
    )
    # border: each border pixel's zero-padded patch against the training patches at the positions of
    # its own border class (one group per border pixel, its class's positions padded to the largest
    # class): only the pairs that count are computed, not every border pair masked to its class
    cls = border_classes(h, w, k).reshape(-1)
    where = np.flatnonzero(cls != r * (2 * r + 1) + r)
    nb = where.size
    members = [np.flatnonzero(cls == cls[p]) for p in where]
    most = max(len(m) for m in members)
    idx = np.zeros((nb, most), np.int32)
    real = np.zeros((nb, most), bool)
    for i, m in enumerate(members):
        idx[i, :len(m)], real[i, :len(m)] = m, True
    # (nb, B, D)
    qb = pk.centred_patches(x, k, "zeros").reshape(b, h * w, -1)[:, where].transpose(1, 0, 2)
    items_b = _images(train, b * nb, most, chunk)

    def border_chunk(item):
        y, valid = item
        n = y.shape[0]
        # (nb, n * most, .)
        group = lambda a: a[:, idx].transpose(1, 0, 2, 3).reshape(nb, n * most, a.shape[-1])
        refs = group(pk.centred_patches(y, k, "zeros").reshape(n, h * w, -1))
        vals = group(y.reshape(n, h * w, c))
        tags = jnp.where(valid[None, :, None] & real[:, None, :], 0, -1).reshape(nb, n * most)
        return refs, vals, tags
    _, edge = pk.stream_patch_lse(qb, inv[None], border_chunk, items_b)
    # (B, nb, C)
    edge = edge.transpose(1, 0, 2)
    out = jnp.zeros((b, h, w, c), x.dtype)
    out = out.at[:, r:h - r, r:w - r, :].set(inner.reshape(b, ih, iw, c))
    out = out.reshape(b, h * w, c).at[:, where].set(edge.reshape(b, nb, c))
    return out.reshape(x.shape)


# ------------------------------------------------------------------------------------------- PSPC
def pspc_square(
    train: jax.Array, x: jax.Array, sigma: jax.Array, k: int, chunk: int | None = None
) -> jax.Array:
    """PSPC-square: posterior means of every k x k window inside the image (k clipped to the image:
    a k at least the image size is the whole image, i.e. the ideal denoiser), averaged over the
    windows covering a pixel."""
    b, h, w, c = x.shape
    kh, kw = min(int(k), h), min(int(k), w)
    if kh < 1:
        raise InputError(f"pspc_square: the patch size must be >= 1; got {k}.")
    q = pk.patches(x, kh, kw)
    oh, ow = q.shape[1:3]
    g = oh * ow
    # (G, B, D)
    q = q.reshape(b, g, -1).transpose(1, 0, 2)
    items = _images(train, b * g, 1, chunk)

    def chunk_fn(item):
        y, valid = item
        refs = pk.patches(y, kh, kw).reshape(y.shape[0], g, -1).transpose(1, 0, 2)
        return refs, refs, _tags(valid)
    _, means = pk.stream_patch_lse(q, _inv_var(sigma, x.dtype)[None], chunk_fn, items)
    windows = means.transpose(1, 0, 2).reshape(b, oh, ow, -1)
    total = pk.fold(windows, x.shape, kh, kw)
    count = pk.fold(jnp.ones((1, oh, ow, kh * kw * c), x.dtype), (1, h, w, c), kh, kw)
    return total / count


def flex_masks(heat: jax.Array, tau: float) -> jax.Array:
    """Boolean masks (..., P, P) from row-normalised heatmaps (..., P, P): row i keeps the pixels
    whose ascending cumulative mass is >= 1 - tau (the smallest set holding >= tau), and always
    pixel i itself."""
    heat = heat / jnp.maximum(jnp.sum(heat, axis=-1, keepdims=True), 1e-30)
    order = jnp.argsort(heat, axis=-1)
    sorted_mass = jnp.cumsum(jnp.take_along_axis(heat, order, axis=-1), axis=-1)
    keep_sorted = sorted_mass >= (1.0 - tau) - 1e-6
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
    return keep | jnp.eye(heat.shape[-1], dtype=bool)


def pspc_flex(train: jax.Array, x: jax.Array, sigma: jax.Array, tau: float, heatmap: Callable,
              chunk: int | None = None) -> jax.Array:
    """PSPC-flex: one masked posterior mean per output pixel; heatmap(sigma (B,)) -> (B, HW, HW)
    sensitivities (row: output pixel, column: input pixel; see `wiener.wiener_heatmap`,
    `calibration.network_heatmap`)."""
    b, h, w, c = x.shape
    p = h * w
    # (B, P, P)
    masks = flex_masks(heatmap(sigma), tau).astype(x.dtype)
    # (P, B, P C)
    weights = jnp.repeat(masks, c, axis=-1).transpose(1, 0, 2)
    q = jnp.broadcast_to(x.reshape(1, b, p * c), (p, b, p * c))
    flat = jnp.reshape(train, (train.shape[0], -1))
    items = _images(flat, b * p, 1, chunk)

    def chunk_fn(item):
        y, valid = item
        return y[None], y[None], _tags(valid)

    _, means = pk.stream_patch_lse(
        q, _inv_var(sigma, x.dtype)[None], chunk_fn, items, weights=weights
    )
    total = jnp.sum(means * weights, axis=0)                                              # (B, P C)
    return (total / jnp.sum(weights, axis=0)).reshape(x.shape)
