"""DDPM++ (Song et al. 2021) in the form EDM re-implements it (Karras et al. 2022, `SongUNet`), with
per-encoder-skip on/off switches for Gu et al.'s skip-connection study.

Architecture (EDM's DDPM++: standard encoder and decoder, [1, 1] resampling filter, i.e. 2x2 average
pooling down and nearest-neighbour up):
  mapping   noise embedding (positional, or random Fourier features)
            [+ Dense(labels * sqrt(label_dim))] [+ Dense(augment labels)]
            -> Dense -> SiLU -> Dense -> SiLU  (B, model_channels * channel_mult_emb)
  encoder   level 0: 3x3 conv; level l > 0: a down-sampling block; then `num_blocks` blocks per
            level (self-attention where the resolution is in `attn_resolutions`). Every one of these
            outputs is an encoder skip, in this order (see `encoder_skip_resolutions`).
  decoder   lowest level: two blocks (the first with attention); other levels: an up-sampling block;
            then `num_blocks + 1` blocks, each concatenating one encoder skip (last in, first out),
            the last of the level with attention at `attn_resolutions`; then GroupNorm -> SiLU ->
            3x3 conv.
  block     GN -> SiLU -> [resample] -> 3x3 conv -> + Dense(emb) -> GN -> SiLU -> dropout -> 3x3
            conv, plus a ([resampled] 1x1 conv) skip, times sqrt(1/2); optional single-head
            attention, residual, times sqrt(1/2).

Initialisation is EDM's: Xavier uniform with zero biases, the last conv of each block, the attention
projection and the output conv scaled by 1e-5, the attention qkv by sqrt(0.2). Submodule and
parameter names follow EDM's (`enc_32x32_block0/conv0` for `enc.32x32_block0.conv0`, `map_layer0`,
...) and the qkv channel order is EDM's, so EDM's weights could be matched by name; diffmem ships no
converter and does not test one (it would transpose conv kernels OIHW -> HWIO and Linear weights,
and rename GroupNorm's weight to scale).

Skip switches: `skip_connections` (one bool per encoder skip, Gu et al.'s
`--skip-connections=1,1,0,...`) or `keep_skips_at` (the resolutions whose skips are kept). A
disabled skip is, as in Gu et al.'s code, replaced by zeros of the same shape (same parameter count;
the decoder block's GroupNorm sees the zero channels), or, with `drop_disabled_skips=True`, not
concatenated at all (fewer parameters). Either way the output no longer depends on that encoder
activation through the skip.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffmem.nets.embeddings import FourierEmbedding, SinusoidalEmbedding
from diffmem.nets.unet import _check_image

__all__ = ["SongBlock", "encoder_skip_resolutions", "SongUNet"]


def _xavier(weight_scale: float = 1.0) -> nn.initializers.Initializer:
    # EDM: xavier_uniform(fan_in, fan_out) * init_weight; variance scales with init_weight^2.
    return nn.initializers.variance_scaling(weight_scale**2, "fan_avg", "uniform")


def _group_norm(
    channels: int, num_groups: int, min_channels_per_group: int, name: str
) -> nn.GroupNorm:
    # EDM: min(32, C // 4) groups, eps 1e-6 throughout DDPM++.
    groups = max(1, min(num_groups, channels // min_channels_per_group))
    return nn.GroupNorm(num_groups=groups, epsilon=1e-6, name=name)


def _downsample(x: jax.Array) -> jax.Array:
    """EDM's [1, 1] filter with stride 2: 2x2 average pooling. (B, H, W, C) -> (B, H/2, W/2, C)."""
    return nn.avg_pool(x, (2, 2), (2, 2))


def _upsample(x: jax.Array) -> jax.Array:
    """EDM's [1, 1] transposed filter with stride 2: nearest neighbour. (B, H, W, C) -> (B, 2H, 2W,
    C)."""
    b, h, w, c = x.shape
    return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(
        b, 2 * h, 2 * w, c
    )


class SongBlock(nn.Module):
    """EDM's UNetBlock in its DDPM++ setting: x (B, H, W, C_in), emb (B, E) -> (B, H', W',
    out_channels)."""
    out_channels: int
    up: bool = False
    down: bool = False
    attention: bool = False
    num_heads: int = 1
    dropout: float = 0.0
    num_groups: int = 32
    min_channels_per_group: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
        cin, cout = x.shape[-1], self.out_channels
        skip_scale = math.sqrt(0.5)
        resample = _upsample if self.up else _downsample if self.down else (lambda v: v)
        norm = lambda c, name: _group_norm(c, self.num_groups, self.min_channels_per_group, name)

        h = nn.silu(norm(cin, "norm0")(x))
        h = nn.Conv(cout, (3, 3), kernel_init=_xavier(), name="conv0")(resample(h))
        h = h + nn.Dense(cout, kernel_init=_xavier(), name="affine")(emb)[:, None, None, :]
        h = nn.silu(norm(cout, "norm1")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(cout, (3, 3), kernel_init=_xavier(1e-5), name="conv1")(h)
        skip = x
        # DDPM++ projects with a 1x1 conv whenever it resamples
        if cout != cin or self.up or self.down:
            skip = nn.Conv(cout, (1, 1), kernel_init=_xavier(), name="skip")(resample(x))
        h = (h + skip) * skip_scale

        if self.attention:
            b, hh, ww, c = h.shape
            heads = self.num_heads
            if c % heads:
                raise ValueError(
                    f"SongBlock: {c} channels do not split into {heads} attention heads."
                )
            d = c // heads
            # EDM splits the 3C qkv channels as (head, channel, {q, k, v}); same order here, so
            # weights port.
            qkv = nn.Conv(3 * c, (1, 1), kernel_init=_xavier(math.sqrt(0.2)), name="qkv")(
                norm(c, "norm2")(h)
            )
            qkv = qkv.reshape(b, hh * ww, heads, d, 3)
            q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
            logits = jnp.einsum(
                "bqhd,bkhd->bhqk", q, k / math.sqrt(d), preferred_element_type=jnp.float32
            )
            w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
            a = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, hh, ww, c)
            h = (nn.Conv(c, (1, 1), kernel_init=_xavier(1e-5), name="proj")(a) + h) * skip_scale
        return h


def encoder_skip_resolutions(
    img_resolution: int, channel_mult: Sequence[int], num_blocks: int
) -> tuple[int, ...]:
    """Resolution (side length) of each encoder skip of a SongUNet, in encoder order.

    Level 0 contributes its input conv and `num_blocks` blocks; each later level its down-sampling
    block and `num_blocks` blocks: len = len(channel_mult) * (num_blocks + 1). E.g. 32 px, (2, 2,
    2), 2 blocks -> (32, 32, 32, 16, 16, 16, 8, 8, 8), the 9 switches of Gu et al.'s
    `--skip-connections`.
    """
    return tuple(
        img_resolution >> level for level in range(len(channel_mult)) for _ in range(num_blocks + 1)
    )


class SongUNet(nn.Module):
    """DDPM++ raw network F(x, c_noise[, labels]) (wrap it with a preconditioning from
    `diffmem.precond`).

    Attributes:
      model_channels: base channel count. channel_mult: multiplier per level. channel_mult_emb:
      embedding
        width / model_channels. num_blocks: blocks per level. attn_resolutions: side lengths with
        attention.
      dropout: dropout rate in the blocks ('dropout' rng when train=True). EDM's CIFAR-10 runs use
      0.13. label_dim: number of classes (0 = unconditional). label_dropout: probability of zeroing
        a label vector in training (classifier-free guidance; 'dropout' rng). augment_dim: EDM's
        augmentation-label width (9 for its CIFAR-10 checkpoints; 0 = none).
      embedding_type: 'positional' (DDPM++) or 'fourier' (random features, `fourier_scale`).
      channel_mult_noise: noise-embedding width / model_channels (1 for DDPM++, 2 for NCSN++).
      num_heads: attention heads (DDPM++: 1). out_channels: None = the input's. num_groups,
      min_channels_per_group: GroupNorm uses min(num_groups, C // min_channels_per_group) groups.
      skip_connections: one bool per encoder skip (see `encoder_skip_resolutions`); None = all kept.
      keep_skips_at: alternatively, the resolutions whose skips are kept (the rest are disabled).
      drop_disabled_skips: False = a disabled skip is concatenated as zeros (Gu et al.); True = not
      at all.

    Defaults are EDM's CIFAR-10 DDPM++: 128 channels, (2, 2, 2), 4 blocks, attention at 16, dropout
    0.13.

    Call: x (B, H, H, C) NHWC, noise_labels (B,) (EDM's c_noise), class_labels None / int (B,) /
    one-hot or soft (B, label_dim) (None with label_dim > 0 means all-zero labels, as EDM),
    augment_labels None or (B, augment_dim) -> (B, H, H, out_channels or C).
    """
    model_channels: int = 128
    channel_mult: Sequence[int] = (2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.13
    label_dim: int = 0
    label_dropout: float = 0.0
    augment_dim: int = 0
    embedding_type: str = "positional"
    channel_mult_noise: int = 1
    fourier_scale: float = 16.0
    num_heads: int = 1
    out_channels: int | None = None
    num_groups: int = 32
    min_channels_per_group: int = 4
    skip_connections: Sequence[bool] | None = None
    keep_skips_at: Sequence[int] | None = None
    drop_disabled_skips: bool = False

    @nn.nowrap
    def kept_skips(self, img_resolution: int) -> tuple[bool, ...]:
        """Which encoder skips are kept, in encoder order, for images of this side length."""
        res = encoder_skip_resolutions(img_resolution, self.channel_mult, self.num_blocks)
        if self.skip_connections is not None and self.keep_skips_at is not None:
            raise ValueError("SongUNet: give skip_connections or keep_skips_at, not both.")
        if self.skip_connections is not None:
            if len(self.skip_connections) != len(res):
                raise ValueError(
                    f"SongUNet: skip_connections needs {len(res)} entries (one per encoder skip, "
                    f"at "
                    f"resolutions {res}); got {len(self.skip_connections)}."
                )
            return tuple(bool(s) for s in self.skip_connections)
        if self.keep_skips_at is not None:
            unknown = set(self.keep_skips_at) - set(res)
            if unknown:
                raise ValueError(
                    f"SongUNet: keep_skips_at {sorted(unknown)} are not encoder resolutions "
                    f"{sorted(set(res))}."
                )
            return tuple(r in self.keep_skips_at for r in res)
        return (True,) * len(res)

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: jax.Array, class_labels: jax.Array | None = None,
                 *, augment_labels: jax.Array | None = None, train: bool = False) -> jax.Array:
        _check_image(x, len(self.channel_mult), "SongUNet")
        batch, res0 = x.shape[0], x.shape[1]
        if noise_labels.ndim != 1 or noise_labels.shape[0] not in (1, batch):
            raise ValueError(
                f"SongUNet: noise_labels must have shape (B,) = ({batch},); got "
                f"{noise_labels.shape}."
            )
        keep = list(self.kept_skips(res0))
        emb = self._embed(noise_labels, class_labels, augment_labels, batch, train)

        block = lambda cout, name, **kw: SongBlock(
            cout,
            num_heads=self.num_heads,
            dropout=self.dropout,
            num_groups=self.num_groups,
            min_channels_per_group=self.min_channels_per_group,
            name=name,
            **kw,
        )
        skips = []
        h = x
        for level, mult in enumerate(self.channel_mult):
            r = res0 >> level
            if level == 0:
                h = nn.Conv(
                    self.model_channels, (3, 3), kernel_init=_xavier(), name=f"enc_{r}x{r}_conv"
                )(h)
            else:
                h = block(h.shape[-1], f"enc_{r}x{r}_down", down=True)(h, emb, train)
            skips.append(h)
            for idx in range(self.num_blocks):
                h = block(self.model_channels * mult, f"enc_{r}x{r}_block{idx}",
                          attention=r in self.attn_resolutions)(h, emb, train)
                skips.append(h)

        for level, mult in reversed(list(enumerate(self.channel_mult))):
            r = res0 >> level
            if level == len(self.channel_mult) - 1:
                h = block(h.shape[-1], f"dec_{r}x{r}_in0", attention=True)(h, emb, train)
                h = block(h.shape[-1], f"dec_{r}x{r}_in1")(h, emb, train)
            else:
                h = block(h.shape[-1], f"dec_{r}x{r}_up", up=True)(h, emb, train)
            for idx in range(self.num_blocks + 1):
                skip, kept = skips.pop(), keep.pop()
                if kept:
                    h = jnp.concatenate([h, skip], axis=-1)
                elif not self.drop_disabled_skips:
                    h = jnp.concatenate([h, jnp.zeros_like(skip)], axis=-1)
                h = block(
                    self.model_channels * mult,
                    f"dec_{r}x{r}_block{idx}",
                    attention=idx == self.num_blocks and r in self.attn_resolutions,
                )(h, emb, train)
        h = nn.silu(_group_norm(h.shape[-1], self.num_groups, self.min_channels_per_group,
                                f"dec_{res0}x{res0}_aux_norm")(h))
        return nn.Conv(self.out_channels or x.shape[-1], (3, 3), kernel_init=_xavier(1e-5),
                       name=f"dec_{res0}x{res0}_aux_conv")(h)

    def _embed(
        self, noise_labels, class_labels, augment_labels, batch: int, train: bool
    ) -> jax.Array:
        """The mapping network: (B, model_channels * channel_mult_emb)."""
        nc = self.model_channels * self.channel_mult_noise
        if self.embedding_type == "positional":
            # [sin, cos], as EDM's
            emb = SinusoidalEmbedding(nc, endpoint=True, name="map_noise")(noise_labels)
        elif self.embedding_type == "fourier":
            emb = FourierEmbedding(nc, self.fourier_scale, name="map_noise")(noise_labels)
            # EDM swaps to [sin, cos]
            emb = jnp.concatenate([emb[:, nc // 2:], emb[:, :nc // 2]], axis=-1)
        else:
            raise ValueError(
                f"SongUNet: embedding_type must be 'positional' or 'fourier'; got "
                f"{self.embedding_type!r}."
            )
        if self.label_dim:
            labels = _label_matrix(class_labels, self.label_dim, batch)
            if train and self.label_dropout:
                drop = (
                    jax.random.uniform(self.make_rng("dropout"), (labels.shape[0], 1))
                    < self.label_dropout
                )
                labels = jnp.where(drop, 0.0, labels)
            emb = emb + nn.Dense(nc, kernel_init=_xavier(), name="map_label")(
                labels * math.sqrt(self.label_dim)
            )
        elif class_labels is not None:
            raise ValueError(
                "SongUNet: class_labels given to an unconditional network (label_dim=0)."
            )
        if self.augment_dim:
            aug = (
                jnp.zeros((1, self.augment_dim), emb.dtype)
                if augment_labels is None
                else augment_labels
            )
            emb = emb + nn.Dense(nc, use_bias=False, kernel_init=_xavier(), name="map_augment")(aug)
        elif augment_labels is not None:
            raise ValueError("SongUNet: augment_labels given but augment_dim=0.")
        emb = nn.silu(
            nn.Dense(self.model_channels * self.channel_mult_emb, kernel_init=_xavier(),
                     name="map_layer0")(emb)
        )
        return nn.silu(
            nn.Dense(self.model_channels * self.channel_mult_emb, kernel_init=_xavier(),
                     name="map_layer1")(emb)
        )


def _label_matrix(class_labels: jax.Array | None, label_dim: int, batch: int) -> jax.Array:
    """Labels as a float (B or 1, label_dim) matrix: None -> zeros, int (B,) -> one-hot, (B,
    label_dim) as is."""
    if class_labels is None:
        return jnp.zeros((1, label_dim), jnp.float32)
    class_labels = jnp.asarray(class_labels)
    if class_labels.ndim == 1 and jnp.issubdtype(class_labels.dtype, jnp.integer):
        class_labels = jax.nn.one_hot(class_labels, label_dim, dtype=jnp.float32)
    if (
        class_labels.ndim != 2
        or class_labels.shape[1] != label_dim
        or class_labels.shape[0] not in (1, batch)
    ):
        raise ValueError(
            f"SongUNet: class_labels must be int (B,) or (B, label_dim) = ({batch}, {label_dim}); "
            f"got shape {class_labels.shape} dtype {class_labels.dtype}."
        )
    return class_labels.astype(jnp.float32)
