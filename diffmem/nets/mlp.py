"""The tutorial's toy score network (associative-memory tutorial, Pham et al.'s 2-D study)."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffmem.nets.embeddings import FourierEmbedding


class ScoreMLP(nn.Module):
    """MLP score network s(x, t) for low-dimensional data.

    time: Fourier features (fixed random frequencies, `fourier_scale`) -> Dense -> SiLU -> Dense -> SiLU;
    body: concat(x, time) -> Dense(hidden) -> (num_layers - 1) x [Dense(hidden) -> SiLU], with a LayerNorm
    before the last SiLU -> Dense(out); the output is divided by the marginal std at t, so it is a score.

    Attributes:
      marginal_std: t (B,) -> (B,), the noise process's marginal standard deviation (e.g. `VESDE().marginal_std`).
      out_dim: data dimension (2 for the circle).
    Call: x (B, out_dim), t (B,) -> score (B, out_dim). t may also be (1,), one time for the whole batch
    (samplers do this): the time branch then runs once instead of B times.
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
        # input_proj acts on concat(x, emb); written as x @ Kx + (emb @ Ke + b), so a shared time (t of shape
        # (1,)) is projected once and broadcast over the batch. It is followed by hidden_0 with no
        # nonlinearity in between (the tutorial's layout), so for batches larger than the composition's own
        # cost (B > d + embed rows) both are applied as one affine map with the same parameters:
        # x @ (Kx W0) + [emb @ (Ke W0) + (b W0 + b0)], one hidden x hidden matmul less per example.
        d = x.shape[-1]
        kernel = self.param("input_proj_kernel", nn.initializers.lecun_normal(), (d + self.embed, self.hidden))
        bias = self.param("input_proj_bias", nn.initializers.zeros_init(), (self.hidden,))
        first = 0
        if self.num_layers >= 2 and x.shape[0] > d + self.embed:
            w0, b0 = _DenseParams(self.hidden, name="hidden_0")(self.hidden)
            kernel, bias, first = kernel @ w0, bias @ w0 + b0, 1
        h = x @ kernel[:d] + (emb.astype(x.dtype) @ kernel[d:] + bias)
        for i in range(self.num_layers - 1):
            if i >= first:
                h = nn.Dense(self.hidden, name=f"hidden_{i}")(h)
            if i == self.num_layers - 2:
                h = nn.LayerNorm(name="norm")(h)
            h = nn.silu(h)
        h = nn.Dense(self.out_dim, name="output")(h)
        return h / self.marginal_std(t)[:, None]


class _DenseParams(nn.Module):
    """The kernel (in, features) and bias (features,) of an `nn.Dense` (same names and initialisers), returned
    instead of applied, so a caller can compose consecutive affine maps."""
    features: int

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return kernel, bias
