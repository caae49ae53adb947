"""Noise-level / time embeddings shared by the score networks."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["FourierEmbedding", "SinusoidalEmbedding"]


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar, [cos(2 pi f t), sin(2 pi f t)] with f ~ N(0, scale^2).

    The frequencies are drawn at `init` and never trained (the tutorial's registered buffer): they
    live in `params` so checkpoints carry them, but receive `stop_gradient`, so Adam leaves them
    unchanged.

    Attributes:
      features: output width (even).
      scale: standard deviation of the frequencies (16 in the tutorial, Song et al.).
    Input (B,) -> output (B, features).
    """
    features: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        freqs = self.param(
            "freqs", lambda key: jax.random.normal(key, (self.features // 2,)) * self.scale
        )
        freqs = jax.lax.stop_gradient(freqs)
        phase = 2 * math.pi * t[:, None] * freqs[None, :]
        return jnp.concatenate([jnp.cos(phase), jnp.sin(phase)], axis=-1)


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of a scalar (DDPM uses it on the integer step).

    emb = [sin(t w_j), cos(t w_j)] with w_j = max_period^(-j / (half - 1)), j = 0..half-1 (DDPM's
    formula; `endpoint=False` divides by half instead, as EDM's PositionalEmbedding does, which also
    puts cos first). Input (B,) -> output (B, features).
    """
    features: int
    max_period: float = 10_000.0
    flip_sin_to_cos: bool = False
    endpoint: bool = True

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        half = self.features // 2
        denom = max(half - 1, 1) if self.endpoint else half
        freqs = jnp.exp(-math.log(self.max_period) * jnp.arange(half, dtype=jnp.float32) / denom)
        arg = t.astype(jnp.float32)[:, None] * freqs[None, :]
        parts = (
            [jnp.cos(arg), jnp.sin(arg)] if self.flip_sin_to_cos else [jnp.sin(arg), jnp.cos(arg)]
        )
        return jnp.concatenate(parts, axis=-1)
