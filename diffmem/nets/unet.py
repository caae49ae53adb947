"""The DDPM UNet of Ho et al. (2020), as used by Pham et al.: epsilon prediction on the integer
step.

Levels with channel multipliers, `num_res_blocks` residual blocks per level (one more on the way up,
each taking a skip connection), self-attention at the resolutions in `attn_resolutions` and in the
middle, GroupNorm, dropout, sinusoidal embedding of the step. The CIFAR-10 setting (ch 128, ch_mult
(1, 2, 2, 2), 2 blocks, attention at 16) has 35,746,307 parameters, Ho et al.'s 35.7M.

Initialisation follows Ho et al.: every kernel is variance-scaling (fan_avg, uniform), i.e. Xavier
uniform, biases zero, and the last convolution of each residual branch, the attention output
projection and the output convolution start (almost) at zero (scale 1e-10), so every block starts as
the identity. `nin_init_scale` sets the scale of the 1x1 ("NIN") layers, i.e. the attention q/k/v
projections and the residual blocks' channel-changing shortcuts: 1.0 in Ho et al.'s TensorFlow code,
0.1 in the score_sde PyTorch port that Pham et al. train (its NIN default; their recipe sets it).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffmem.nets.embeddings import SinusoidalEmbedding

__all__ = ["ResBlock", "AttnBlock", "DDPMUNet", "count_params"]


def _init(scale: float = 1.0) -> nn.initializers.Initializer:
    # Ho et al.'s default_init: variance_scaling(1e-10 if scale == 0 else scale, "fan_avg",
    # "uniform").
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


_ZERO = 1e-10


def _norm(groups: int, channels: int, name: str | None = None) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(groups, channels), epsilon=1e-6, name=name)


class ResBlock(nn.Module):
    """GN -> swish -> conv -> + Dense(temb) -> GN -> swish -> dropout -> conv, plus a 1x1 skip if
    needed.

    x (B, H, W, C_in), temb (B, E) -> (B, H, W, out_ch).
    """
    out_ch: int
    dropout: float
    num_groups: int = 32
    nin_init_scale: float = 1.0

    @nn.compact
    def __call__(self, x, temb, train: bool):
        h = nn.swish(_norm(self.num_groups, x.shape[-1], "norm1")(x))
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=_init(), name="conv1")(h)
        h = (
            h
            + nn.Dense(self.out_ch, kernel_init=_init(), name="temb_proj")(nn.swish(temb))[
                :, None, None, :
            ]
        )
        h = nn.swish(_norm(self.num_groups, self.out_ch, "norm2")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=_init(_ZERO), name="conv2")(h)
        if x.shape[-1] != self.out_ch:
            # 1x1 conv ("NIN")
            x = nn.Dense(self.out_ch, kernel_init=_init(self.nin_init_scale), name="skip")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions with a residual connection: (B,H,W,C) ->
    same."""
    num_groups: int = 32
    nin_init_scale: float = 1.0   # q, k, v projections (the output projection starts at zero)

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        h = _norm(self.num_groups, c, "norm")(x)
        q, k, v = (
            nn.Dense(c, kernel_init=_init(self.nin_init_scale), name=n)(h).reshape(b, hh * ww, c)
            for n in ("q", "k", "v")
        )
        logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(
            float(c)
        )
        w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bij,bjc->bic", w, v).reshape(b, hh, ww, c)
        return x + nn.Dense(c, kernel_init=_init(_ZERO), name="proj_out")(out)


class DDPMUNet(nn.Module):
    """epsilon_theta(x_t, t) of Ho et al.

    Attributes:
      ch: base channel count. ch_mult: channel multiplier per level (one level per resolution).
      num_res_blocks: residual blocks per level on the way down (the way up has one more).
      attn_resolutions: resolutions (side length in pixels) with self-attention after each block.
      dropout: dropout rate inside the residual blocks (the 'dropout' rng when train=True).
      out_channels: output channels; None = the input's.
      num_groups: GroupNorm groups, capped at the channel count (so tiny test networks work).
      resamp_with_conv: a 3x3 convolution in the up/down-sampling layers (Ho et al.: True); else
        nearest-neighbour up-sampling / 2x2 average pooling alone.
      nin_init_scale: variance-scaling scale of the 1x1 layers (attention q/k/v, residual
        shortcuts): Ho et al. 1.0, Pham et al.'s code 0.1.

    Call: x (B, H, W, C) NHWC with H = W divisible by 2^(len(ch_mult) - 1), t (B,) integer-valued
    steps (float is fine; (1,) shares one step across the batch) -> epsilon prediction (B, H, W,
    out_channels or C).
    """
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    out_channels: int | None = None
    num_groups: int = 32
    resamp_with_conv: bool = True
    nin_init_scale: float = 1.0

    @nn.compact
    def __call__(self, x, t, *, train: bool = False):
        _check_image(x, len(self.ch_mult), "DDPMUNet")
        if t.ndim != 1 or t.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"DDPMUNet: t must have shape (B,) = {x.shape[:1]} (or (1,)); got {t.shape}."
            )
        g, nin = self.num_groups, self.nin_init_scale
        temb = SinusoidalEmbedding(self.ch)(t)
        temb = nn.Dense(4 * self.ch, kernel_init=_init(), name="temb_0")(temb)
        temb = nn.Dense(4 * self.ch, kernel_init=_init(), name="temb_1")(nn.swish(temb))
        hs = [nn.Conv(self.ch, (3, 3), kernel_init=_init(), name="conv_in")(x)]
        res = x.shape[1]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, self.dropout, g, nin)(hs[-1], temb, train)
                if res in self.attn_resolutions:
                    h = AttnBlock(g, nin)(h)
                hs.append(h)
            if level != len(self.ch_mult) - 1:
                h = hs[-1]
                if self.resamp_with_conv:
                    # 'SAME' with stride 2 pads (0, 1) on even sizes, as TensorFlow did for Ho et
                    # al.
                    h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), kernel_init=_init(),
                                name=f"down_{level}")(h)
                else:
                    h = nn.avg_pool(h, (2, 2), (2, 2))
                hs.append(h)
                res //= 2
        h = ResBlock(hs[-1].shape[-1], self.dropout, g, nin)(hs[-1], temb, train)
        h = AttnBlock(g, nin)(h)
        h = ResBlock(h.shape[-1], self.dropout, g, nin)(h, temb, train)
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock(self.ch * mult, self.dropout, g, nin)(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train
                )
                if res in self.attn_resolutions:
                    h = AttnBlock(g, nin)(h)
            if level != 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, hh * 2, ww * 2, c), "nearest")
                if self.resamp_with_conv:
                    h = nn.Conv(c, (3, 3), kernel_init=_init(), name=f"up_{level}")(h)
                res *= 2
        assert not hs
        h = nn.swish(_norm(g, h.shape[-1], "norm_out")(h))
        return nn.Conv(
            self.out_channels or x.shape[-1], (3, 3), kernel_init=_init(_ZERO), name="conv_out"
        )(h)


def _check_image(x: jax.Array, levels: int, who: str) -> None:
    """ValueError unless x is (B, H, H, C) with H divisible by 2^(levels - 1)."""
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
        raise ValueError(f"{who}: x must be square NHWC images (B, H, H, C); got shape {x.shape}.")
    if x.shape[1] % (2 ** (levels - 1)):
        raise ValueError(
            f"{who}: image size {x.shape[1]} is not divisible by 2^{levels - 1}, needed by "
            f"{levels} levels; resize the images or use fewer channel multipliers."
        )


def count_params(module: nn.Module, x_shape: tuple[int, ...], *extra_shapes, **call_kwargs) -> int:
    """Number of trainable-parameter scalars (the 'params' collection) of `module` for inputs of
    these shapes.

    Uses `jax.eval_shape` on `init`, so nothing is allocated or computed. Every input is float32 of
    the given shape (x first, then `extra_shapes` in call order); `call_kwargs` pass through to
    `init`.
    """
    args = [jax.ShapeDtypeStruct(x_shape, jnp.float32)] + [
        jax.ShapeDtypeStruct(s, jnp.float32) for s in extra_shapes
    ]
    shapes = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, **call_kwargs), *args)
    return sum(int(leaf.size) for leaf in jax.tree.leaves(shapes.get("params", {})))
