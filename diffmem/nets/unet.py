"""The DDPM UNet of Ho et al. (2020), as used by Pham et al.: epsilon prediction on the integer step.

Levels with channel multipliers, `num_res_blocks` residual blocks per level (one more on the way up, each
taking a skip connection), self-attention at the resolutions in `attn_resolutions` and in the middle,
GroupNorm, dropout, sinusoidal embedding of the step. The CIFAR-10 setting (ch 128, ch_mult (1, 2, 2, 2),
2 blocks, attention at 16) has 35.7M parameters, as Ho et al. report.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffmem.nets.embeddings import SinusoidalEmbedding


def _norm(groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(groups, channels), epsilon=1e-6)


class ResBlock(nn.Module):
    """GN -> swish -> conv -> + Dense(temb) -> GN -> swish -> dropout -> conv, plus a 1x1 skip if needed."""
    out_ch: int
    dropout: float
    num_groups: int = 32

    @nn.compact
    def __call__(self, x, temb, train: bool):
        h = nn.Conv(self.out_ch, (3, 3), name="conv1")(nn.swish(_norm(self.num_groups, x.shape[-1])(x)))
        h = h + nn.Dense(self.out_ch, name="temb_proj")(nn.swish(temb))[:, None, None, :]
        h = nn.swish(_norm(self.num_groups, self.out_ch)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), name="conv2")(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Dense(self.out_ch, name="skip")(x)  # 1x1 convolution ("NIN")
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions with a residual connection."""
    num_groups: int = 32

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        h = _norm(self.num_groups, c)(x)
        q, k, v = (nn.Dense(c, name=n)(h).reshape(b, hh * ww, c) for n in ("q", "k", "v"))
        w = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) / jnp.sqrt(c).astype(x.dtype), axis=-1)
        out = jnp.einsum("bij,bjc->bic", w, v).reshape(b, hh, ww, c)
        return x + nn.Dense(c, name="proj_out")(out)


class DDPMUNet(nn.Module):
    """epsilon_theta(x_t, t): x (B, H, W, C) NHWC, t (B,) integer-valued steps -> (B, H, W, out_ch or C)."""
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    out_ch: int | None = None
    num_groups: int = 32

    @nn.compact
    def __call__(self, x, t, *, train: bool = False):
        g = self.num_groups
        temb = SinusoidalEmbedding(self.ch)(t)
        temb = nn.Dense(4 * self.ch, name="temb_0")(temb)
        temb = nn.Dense(4 * self.ch, name="temb_1")(nn.swish(temb))
        hs = [nn.Conv(self.ch, (3, 3), name="conv_in")(x)]
        res = x.shape[1]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, self.dropout, g)(hs[-1], temb, train)
                if res in self.attn_resolutions:
                    h = AttnBlock(g)(h)
                hs.append(h)
            if level != len(self.ch_mult) - 1:
                hs.append(nn.Conv(self.ch * mult, (3, 3), strides=(2, 2), name=f"down_{level}")(hs[-1]))
                res //= 2
        h = ResBlock(hs[-1].shape[-1], self.dropout, g)(hs[-1], temb, train)
        h = AttnBlock(g)(h)
        h = ResBlock(h.shape[-1], self.dropout, g)(h, temb, train)
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock(self.ch * mult, self.dropout, g)(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
                if res in self.attn_resolutions:
                    h = AttnBlock(g)(h)
            if level != 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, hh * 2, ww * 2, c), "nearest")
                h = nn.Conv(c, (3, 3), name=f"up_{level}")(h)
                res *= 2
        assert not hs
        h = nn.swish(_norm(g, h.shape[-1])(h))
        return nn.Conv(self.out_ch or x.shape[-1], (3, 3), name="conv_out")(h)


def count_params(module: nn.Module, x_shape: tuple[int, ...], *extra_shapes) -> int:
    """Parameter count from `jax.eval_shape` of init (no memory, no compute)."""
    args = [jax.ShapeDtypeStruct(x_shape, jnp.float32)] + [jax.ShapeDtypeStruct(s, jnp.float32) for s in extra_shapes]
    shapes = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a), *args)
    return sum(int(jnp.prod(jnp.asarray(l.shape))) for l in jax.tree.leaves(shapes))
