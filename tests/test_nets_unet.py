"""Image networks: published parameter counts (via eval_shape), tiny forward passes, dropout, class labels,
the per-skip switches of DDPM++ (Gu et al.), and the DDPM time embedding."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import nets
from diffmem.nets.songunet import SongUNet, encoder_skip_resolutions


# ------------------------------------------------------------------------------ published parameter counts
def test_ddpm_cifar10_unet_has_35_7m_parameters():
    # Ho et al. (2020): 35.7M for ch 128, ch_mult (1, 2, 2, 2), 2 res blocks, attention at 16 px.
    assert nets.count_params(nets.DDPMUNet(), (1, 32, 32, 3), (1,)) == 35_746_307


def test_ddpmpp_cifar10_has_edms_55_73m_parameters():
    # EDM's CIFAR-10 DDPM++ (128 channels, (2, 2, 2), 4 blocks, attention at 16): 55.73M in Karras et al.
    # Exact counts equal those of EDM's PyTorch SongUNet with the same arguments.
    assert nets.count_params(SongUNet(), (1, 32, 32, 3), (1,)) == 55_732_739
    assert nets.count_params(SongUNet(label_dim=10), (1, 32, 32, 3), (1,), (1, 10)) == 55_734_147
    assert nets.count_params(SongUNet(augment_dim=9), (1, 32, 32, 3), (1,)) == 55_733_891  # EDM's checkpoints


def test_gu_skip_switches_parameter_counts():
    # Gu et al.'s basic setting: DDPM++ with 2 blocks per level -> 9 encoder skips.
    assert encoder_skip_resolutions(32, (2, 2, 2), 2) == (32, 32, 32, 16, 16, 16, 8, 8, 8)
    full = nets.count_params(SongUNet(num_blocks=2), (1, 32, 32, 3), (1,))
    assert full == 35_125_251
    only32 = (True,) * 3 + (False,) * 6
    zeros = SongUNet(num_blocks=2, skip_connections=only32)  # Gu et al.: disabled skips concatenated as zeros
    assert nets.count_params(zeros, (1, 32, 32, 3), (1,)) == full
    dropped = SongUNet(num_blocks=2, skip_connections=only32, drop_disabled_skips=True)
    # Each of the 6 dropped 256-channel skips removes 256 input channels from one decoder block: GroupNorm
    # (2 x 256), 3x3 conv (9 x 256 x 256), and its 1x1 skip projection (512 x 256 + 256), which is no longer
    # needed once the block's input and output widths agree.
    per_skip = 2 * 256 + 9 * 256 * 256 + (512 * 256 + 256)
    assert nets.count_params(dropped, (1, 32, 32, 3), (1,)) == full - 6 * per_skip
    by_res = SongUNet(num_blocks=2, keep_skips_at=(32,), drop_disabled_skips=True)
    assert nets.count_params(by_res, (1, 32, 32, 3), (1,)) == nets.count_params(dropped, (1, 32, 32, 3), (1,))


# ------------------------------------------------------------------------------------------- DDPM UNet
def _perturbed(params, key, scale=0.1):
    # Random weights everywhere: EDM's near-zero initial layers would hide dependencies.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def tiny_ddpm():
    m = nets.DDPMUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.5, num_groups=8)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    t = jnp.array([0, 10, 999])
    # Compiled once: op-by-op (eager) execution of a UNet is far slower than compiling it.
    return m, jax.jit(m.init)(jax.random.key(1), x, t), x, t, jax.jit(m.apply, static_argnames="train")


def test_tiny_unet_forward_and_dropout(tiny_ddpm):
    m, params, x, t, apply = tiny_ddpm
    # Ho et al.'s initialisation: the output convolution starts at (almost) zero.
    assert float(jnp.max(jnp.abs(apply(params, x, t)))) < 1e-4
    params = _perturbed(params, jax.random.key(4), 0.05)
    y = apply(params, x, t)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_array_equal(y, apply(params, x, t))  # deterministic in eval mode
    a = apply(params, x, t, train=True, rngs={"dropout": jax.random.key(2)})
    b = apply(params, x, t, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(a, b)
    # Each example is processed independently (GroupNorm normalises per example).
    np.testing.assert_allclose(apply(params, x[:1], t[:1]), y[:1], rtol=1e-5, atol=1e-6)


def test_unet_rejects_bad_shapes(tiny_ddpm):
    m, params, x, t, _ = tiny_ddpm
    with pytest.raises(ValueError, match="square"):
        m.apply(params, jnp.zeros((3, 8, 4, 1)), t)
    with pytest.raises(ValueError, match="divisible"):
        nets.DDPMUNet(ch=16, ch_mult=(1, 2, 2, 2), num_groups=8).init(jax.random.key(0), jnp.zeros((1, 12, 12, 1)),
                                                                      jnp.zeros((1,)))
    with pytest.raises(ValueError, match="t must have shape"):
        m.apply(params, x, t[:2])


def test_ddpm_sinusoidal_embedding_formula():
    e = nets.SinusoidalEmbedding(8).apply({}, jnp.array([3.0]))
    half = 4
    w = np.exp(-np.log(10000) * np.arange(half) / (half - 1))
    np.testing.assert_allclose(e[0], np.concatenate([np.sin(3 * w), np.cos(3 * w)]), rtol=1e-6)


# -------------------------------------------------------------------------------------- DDPM++ (SongUNet)
TINY = dict(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0)
# Encoder skips of TINY on 8x8 inputs: enc_8x8_conv, enc_8x8_block0, enc_4x4_down, enc_4x4_block0.


@pytest.fixture(scope="module")
def tiny_song():
    m = SongUNet(**TINY, label_dim=10, label_dropout=0.0)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 2))
    c = jnp.array([-1.0, 0.3, 2.0])
    labels = jnp.array([0, 3, 9])
    params = _perturbed(jax.jit(m.init)(jax.random.key(1), x, c, labels), jax.random.key(2))
    return m, params, x, c, labels


def test_songunet_forward_labels_and_determinism(tiny_song):
    m, params, x, c, labels = tiny_song
    apply = jax.jit(m.apply)
    y = apply(params, x, c, labels)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_array_equal(y, apply(params, x, c, labels))
    # int labels are one-hot encoded: the same as passing the one-hot matrix.
    np.testing.assert_allclose(apply(params, x, c, jax.nn.one_hot(labels, 10)), y, rtol=1e-6, atol=1e-6)
    # The label matters; None means all-zero labels (EDM's convention).
    assert not np.allclose(apply(params, x, c, jnp.array([1, 3, 9]))[0], y[0])
    np.testing.assert_allclose(apply(params, x, c, None), apply(params, x, c, jnp.zeros((3, 10))), rtol=1e-6)
    # Per-example processing.
    np.testing.assert_allclose(apply(params, x[1:2], c[1:2], labels[1:2]), y[1:2], rtol=1e-5, atol=1e-5)


def test_songunet_dropout_uses_the_dropout_rng(tiny_song):
    _, params, x, c, labels = tiny_song
    m = SongUNet(**{**TINY, "dropout": 0.5}, label_dim=10, label_dropout=0.5)
    apply = jax.jit(lambda key: m.apply(params, x, c, labels, train=True, rngs={"dropout": key}))
    a, b = apply(jax.random.key(5)), apply(jax.random.key(6))
    assert a.shape == x.shape and not np.allclose(a, b)
    np.testing.assert_array_equal(a, apply(jax.random.key(5)))


def test_songunet_fourier_embedding_and_input_errors(tiny_song):
    _, _, x, c, labels = tiny_song
    m = SongUNet(**TINY, embedding_type="fourier", channel_mult_noise=2, out_channels=1)
    params = jax.eval_shape(m.init, jax.random.key(0), x, c)
    assert params["params"]["map_noise"]["freqs"].shape == (16,)
    assert jax.eval_shape(m.apply, params, x, c).shape == (3, 8, 8, 1)
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(m.apply, params, x, c, labels)
    with pytest.raises(ValueError, match="class_labels"):
        SongUNet(**TINY, label_dim=10).init(jax.random.key(0), x, c, jnp.zeros((3, 7)))
    with pytest.raises(ValueError, match="needs 4 entries"):
        SongUNet(**TINY, skip_connections=(True, False)).init(jax.random.key(0), x, c)
    with pytest.raises(ValueError, match="not encoder resolutions"):
        SongUNet(**TINY, keep_skips_at=(16,)).init(jax.random.key(0), x, c)
    with pytest.raises(ValueError, match="noise_labels"):
        jax.eval_shape(m.apply, params, x, c[:2])


def _skip_gradient(m, params, x, c, producer, consumer):
    """d(sum of the output * fixed weights) / d(delta), where delta is added to the output of the encoder
    module `producer` and subtracted again from the input of `consumer` (the next module on the main path),
    so the only route left from delta to the output is the skip connection of that encoder activation."""
    w = jax.random.normal(jax.random.key(7), x.shape)

    def out(delta):
        def interceptor(next_fun, args, kwargs, context):
            name = context.module.name if context.method_name == "__call__" else None
            if name == producer:
                return next_fun(*args, **kwargs) + delta
            if name == consumer:
                return next_fun(args[0] - delta, *args[1:], **kwargs)
            return next_fun(*args, **kwargs)
        with nn.intercept_methods(interceptor):
            return jnp.sum(m.apply(params, x, c) * w)

    return jax.jit(jax.grad(out))(jnp.zeros((x.shape[0], 8, 8, 16)))


@pytest.mark.parametrize("drop", [False, True])
def test_disabled_skip_makes_output_independent_of_that_activation(drop):
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    c = jnp.array([0.1, -0.5])
    on = SongUNet(**TINY)
    off = SongUNet(**TINY, skip_connections=(True, False, True, True), drop_disabled_skips=drop)
    p_on = _perturbed(jax.jit(on.init)(jax.random.key(1), x, c), jax.random.key(2))
    p_off = _perturbed(jax.jit(off.init)(jax.random.key(1), x, c), jax.random.key(2))
    assert (nets.count_params(off, x.shape, c.shape) < nets.count_params(on, x.shape, c.shape)) == drop
    g_on = _skip_gradient(on, p_on, x, c, "enc_8x8_block0", "enc_4x4_down")
    g_off = _skip_gradient(off, p_off, x, c, "enc_8x8_block0", "enc_4x4_down")
    assert float(jnp.max(jnp.abs(g_on))) > 1e-3  # the skip carries the activation when kept ...
    np.testing.assert_array_equal(g_off, 0.0)    # ... and nothing at all when switched off
    y = jax.jit(off.apply)(p_off, x, c)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))


def test_keep_skips_at_equals_the_boolean_mask():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    c = jnp.array([0.1, -0.5])
    a = SongUNet(**TINY, keep_skips_at=(4,))
    b = SongUNet(**TINY, skip_connections=(False, False, True, True))
    params = _perturbed(jax.jit(a.init)(jax.random.key(1), x, c), jax.random.key(2))
    np.testing.assert_array_equal(jax.jit(a.apply)(params, x, c), jax.jit(b.apply)(params, x, c))
    assert a.kept_skips(8) == (False, False, True, True)
