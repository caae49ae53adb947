"""DDPM UNet: the published parameter count, shapes, dropout and the DDPM time embedding."""
import jax
import jax.numpy as jnp
import numpy as np

from diffmem import nets


def test_ddpm_cifar10_unet_has_35_7m_parameters():
    # Ho et al. (2020): 35.7M for ch 128, ch_mult (1, 2, 2, 2), 2 res blocks, attention at 16 px.
    assert nets.count_params(nets.DDPMUNet(), (1, 32, 32, 3), (1,)) == 35_746_307


def test_tiny_unet_forward_and_dropout():
    m = nets.DDPMUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.5, num_groups=8)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    t = jnp.array([0, 10, 999])
    params = m.init(jax.random.key(1), x, t)
    y = m.apply(params, x, t)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_array_equal(y, m.apply(params, x, t))  # deterministic in eval mode
    a = m.apply(params, x, t, train=True, rngs={"dropout": jax.random.key(2)})
    b = m.apply(params, x, t, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(a, b)
    # Each example is processed independently (GroupNorm normalises per example).
    np.testing.assert_allclose(m.apply(params, x[:1], t[:1]), y[:1], rtol=1e-5, atol=1e-6)


def test_ddpm_sinusoidal_embedding_formula():
    e = nets.SinusoidalEmbedding(8).apply({}, jnp.array([3.0]))
    half = 4
    w = np.exp(-np.log(10000) * np.arange(half) / (half - 1))
    np.testing.assert_allclose(e[0], np.concatenate([np.sin(3 * w), np.cos(3 * w)]), rtol=1e-6)
