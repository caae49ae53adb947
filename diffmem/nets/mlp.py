"""The tutorial's toy score network (associative-memory tutorial, Pham et al.'s 2-D study)."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax

from diffmem.nets.embeddings import FourierEmbedding

__all__ = ["ScoreMLP"]


class ScoreMLP(nn.Module):
    """MLP score network s(x, t) for low-dimensional data.

    time: Fourier features (fixed random frequencies, `fourier_scale`) -> Dense -> SiLU -> Dense ->
    SiLU; body: concat(x, time) -> Dense(hidden) -> (num_layers - 1) x [Dense(hidden) -> SiLU], with
    a LayerNorm before the last SiLU -> Dense(out); the output is divided by the marginal std at t,
    so it is a score.

    Attributes:
      marginal_std: t (B,) -> (B,), the noise process's marginal standard deviation (e.g.
      `VESDE().marginal_std`). out_dim: data dimension (2 for the circle).
    Call: x (B, out_dim), t (B,) -> score (B, out_dim). t may also be (1,), one time for the whole
    batch (samplers do this): the time branch then runs once instead of B times.
    """
    marginal_std: Callable[[jax.Array], jax.Array]
    out_dim: int = 2
    num_layers: int = 4
    hidden: int = 128
    embed: int = 128
    fourier_scale: float = 16.0

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        emb = FourierEmbedding(self.embed, self.fourier_scale, name="fourier")(t)
        emb = nn.silu(nn.Dense(self.embed, name="time_dense_0")(emb))
        emb = nn.silu(nn.Dense(self.embed, name="time_dense_1")(emb))
        # input_proj is one Dense on concat(x, emb), written as x @ Kx + (emb @ Ke + b) so that a
        # shared time (t of shape (1,)) is projected once and broadcast over the batch.
        d = x.shape[-1]
        kernel = self.param(
            "input_proj_kernel", nn.initializers.lecun_normal(), (d + self.embed, self.hidden)
        )
        bias = self.param("input_proj_bias", nn.initializers.zeros_init(), (self.hidden,))
        h = x @ kernel[:d] + (emb.astype(x.dtype) @ kernel[d:] + bias)
        for i in range(self.num_layers - 1):
            h = nn.Dense(self.hidden, name=f"hidden_{i}")(h)
            if i == self.num_layers - 2:
                h = nn.LayerNorm(name="norm")(h)
            h = nn.silu(h)
        h = nn.Dense(self.out_dim, name="output")(h)
        return h / self.marginal_std(t)[:, None]
