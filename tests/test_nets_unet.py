"""Image networks: published parameter counts (via eval_shape), tiny forward passes, dropout, class
labels, the per-skip switches of DDPM++ (Gu et al.), and the DDPM time embedding.

Compilation dominates on a CPU, so every network is compiled as few times as possible: random
weights come from `eval_shape` (no `init` compile), each compiled function is reused across checks
of the same shapes, and structural equalities are checked on jaxprs (tracing only)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import nets
from diffmem.nets.songunet import SongUNet, _label_matrix, encoder_skip_resolutions


# ----------------------------------------------------------------------- published parameter counts
def edm_block_params(cin, cout, emb=512, attention=False, resample=False):
    """Parameters of one EDM UNetBlock in its DDPM++ setting, tallied from its constructor:
    GroupNorm 2C, Conv2d O*I*k*k + O, Linear I*O + O; norm0, conv0, affine, norm1, conv1, a 1x1 skip
    when the widths differ or the block resamples, and norm2, qkv, proj with attention."""
    conv = lambda i, o, k: o * i * k * k + o
    n = 2 * cin + conv(cin, cout, 3) + emb * cout + cout + 2 * cout + conv(cout, cout, 3)
    n += conv(cin, cout, 1) if (cout != cin or resample) else 0
    return n + ((2 * cout + conv(cout, 3 * cout, 1) + conv(cout, cout, 1)) if attention else 0)


def edm_ddpmpp_params(img_channels=3, res=32, model_channels=128, channel_mult=(2, 2, 2),
                      num_blocks=4, attn_resolutions=(16,), label_dim=0, augment_dim=0,
                      channel_mult_emb=4, channel_mult_noise=1):
    """Parameter count of EDM's PyTorch SongUNet (standard encoder and decoder), walked as its
    constructor builds it: mapping layers, encoder (conv, down blocks, blocks), decoder (in0/in1, up
    blocks, blocks that take one encoder skip each), aux GroupNorm and conv."""
    emb, nc = model_channels * channel_mult_emb, model_channels * channel_mult_noise
    block = lambda cin, cout, **kw: edm_block_params(cin, cout, emb, **kw)
    total = (
        (label_dim * nc + nc if label_dim else 0)
        + augment_dim * nc
        + nc * emb
        + emb
        + emb * emb
        + emb
    )
    skips, cout = [], img_channels
    for level, mult in enumerate(channel_mult):
        r = res >> level
        total += (
            (model_channels * cout * 9 + model_channels)
            if level == 0
            else block(cout, cout, resample=True)
        )
        cout = model_channels if level == 0 else cout
        skips.append(cout)
        for _ in range(num_blocks):
            total += block(cout, model_channels * mult, attention=r in attn_resolutions)
            cout = model_channels * mult
            skips.append(cout)
    for level, mult in reversed(list(enumerate(channel_mult))):
        r = res >> level
        total += (
            block(cout, cout, attention=True) + block(cout, cout)
            if level == len(channel_mult) - 1
            else block(cout, cout, resample=True)
        )
        for idx in range(num_blocks + 1):
            total += block(cout + skips.pop(), model_channels * mult,
                           attention=idx == num_blocks and r in attn_resolutions)
            cout = model_channels * mult
    return total + 2 * cout + img_channels * cout * 9 + img_channels


def test_ddpm_cifar10_unet_has_35_7m_parameters():
    # Ho et al. (2020): 35.7M for ch 128, ch_mult (1, 2, 2, 2), 2 res blocks, attention at 16 px.
    assert nets.count_params(nets.DDPMUNet(), (1, 32, 32, 3), (1,)) == 35_746_307


def test_ddpmpp_cifar10_has_edms_55_73m_parameters():
    # EDM's CIFAR-10 DDPM++ (128 channels, (2, 2, 2), 4 blocks, attention at 16): 55.73M. Its
    # released CIFAR-10 checkpoints also carry the augmentation-label layer (augment_dim 9, 9 x 128
    # weights) and the conditional ones the class-label layer (10 x 128 + 128). Each count equals
    # EDM's own layer tally.
    cases = [({}, 55_732_739), ({"augment_dim": 9}, 55_733_891), ({"label_dim": 10}, 55_734_147),
             ({"label_dim": 10, "augment_dim": 9}, 55_735_299)]
    for kw, expected in cases:
        extra = [(1, 10)] if kw.get("label_dim") else []
        assert (
            nets.count_params(SongUNet(**kw), (1, 32, 32, 3), (1,), *extra)
            == expected
            == edm_ddpmpp_params(**kw)
        )
    # The block tally against the per-module figures EDM's module summary prints for 256-channel
    # blocks (training logs of EDM-based CIFAR runs): plain, with attention, taking a 256-channel
    # skip, resampling.
    assert edm_block_params(256, 256) == 1_312_512
    assert edm_block_params(256, 256, attention=True) == 1_576_192
    assert edm_block_params(512, 256) == 2_034_176
    assert edm_block_params(256, 256, resample=True) == 1_378_304


def test_gu_skip_switches_parameter_counts():
    # Gu et al.'s basic setting: DDPM++ with 2 blocks per level -> 9 encoder skips.
    assert encoder_skip_resolutions(32, (2, 2, 2), 2) == (32, 32, 32, 16, 16, 16, 8, 8, 8)
    full = nets.count_params(SongUNet(num_blocks=2), (1, 32, 32, 3), (1,))
    assert full == 35_125_251 == edm_ddpmpp_params(num_blocks=2)
    only32 = (True,) * 3 + (False,) * 6
    # Gu et al.: disabled skips concatenated as zeros
    zeros = SongUNet(num_blocks=2, skip_connections=only32)
    assert nets.count_params(zeros, (1, 32, 32, 3), (1,)) == full
    dropped = SongUNet(num_blocks=2, skip_connections=only32, drop_disabled_skips=True)
    # Each of the 6 dropped 256-channel skips removes 256 input channels from one decoder block:
    # GroupNorm (2 x 256), 3x3 conv (9 x 256 x 256), and its 1x1 skip projection (512 x 256 + 256),
    # which is no longer needed once the block's input and output widths agree.
    per_skip = 2 * 256 + 9 * 256 * 256 + (512 * 256 + 256)
    assert nets.count_params(dropped, (1, 32, 32, 3), (1,)) == full - 6 * per_skip
    by_res = SongUNet(num_blocks=2, keep_skips_at=(32,), drop_disabled_skips=True)
    assert nets.count_params(by_res, (1, 32, 32, 3), (1,)) == nets.count_params(
        dropped, (1, 32, 32, 3), (1,)
    )


# ------------------------------------------------------------------------------------------ helpers
def _random_params(module, *args, scale=0.1, seed=0):
    """Random weights everywhere, from the parameter shapes alone (no compiled `init`): GroupNorm
    scales 1 + noise, every other leaf noise, so no layer starts at zero (EDM's and Ho et al.'s
    near-zero initial layers would hide dependencies)."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
    rng = np.random.default_rng(seed)

    def draw(path, s):
        noise = scale * rng.standard_normal(s.shape).astype(np.float32)
        is_norm_scale = path[-1].key == "scale"
        return jnp.asarray(noise + 1.0 if is_norm_scale else noise)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def _changed_elsewhere(x, keep: int, key):
    """x with every example but `keep` replaced by fresh noise (same shape: no recompilation)."""
    other = jax.random.normal(key, x.shape, x.dtype)
    return jnp.where((jnp.arange(x.shape[0]) == keep)[:, None, None, None], x, other)


# ---------------------------------------------------------------------------------------- DDPM UNet
@pytest.fixture(scope="module")
def tiny_ddpm():
    m = nets.DDPMUNet(
        ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.5, num_groups=8
    )
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    t = jnp.array([0, 10, 999])
    params = _random_params(m, x, t, scale=0.05)
    return m, params, x, t, jax.jit(m.apply, static_argnames="train")


def test_ddpm_initialisation_starts_every_block_at_the_identity():
    # Ho et al.: the last conv of each residual branch, the attention output and the output conv
    # start at (almost) zero, so the initial network outputs (almost) zero. One compile gives params
    # and output.
    m = nets.DDPMUNet(
        ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0, num_groups=4
    )
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    y, params = jax.jit(m.init_with_output)(jax.random.key(1, impl="rbg"), x, jnp.array([3, 700]))
    assert float(jnp.max(jnp.abs(y))) < 1e-4
    flat = {
        "/".join(k.key for k in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    zero = [k for k in flat if k.endswith(("conv2/kernel", "proj_out/kernel", "conv_out/kernel"))]
    # 5 residual blocks (1 down, 2 middle, 2 up), the middle attention, the output conv
    assert len(zero) == 7
    for k in zero:
        assert float(jnp.max(jnp.abs(flat[k]))) < 1e-4, k
    assert float(jnp.max(jnp.abs(flat["params/conv_in/kernel"]))) > 1e-2


def test_nin_init_scale_of_pham_et_als_recipe():
    """score_sde's NIN layers (attention q/k/v, residual shortcuts) start at variance scale 0.1 in
    Pham et al.'s code: std sqrt(0.1 / fan_avg) for Xavier-uniform; with one key every such kernel
    is sqrt(0.1) times the scale-1.0 one (Ho et al.) and every other parameter is unchanged. (Eager
    inits of single blocks: no compile.)"""
    from diffmem.nets.unet import AttnBlock, ResBlock
    x, temb = jnp.zeros((1, 4, 4, 64)), jnp.zeros((1, 8))
    inits = {
        s: (AttnBlock(8, s).init(jax.random.key(0), x)["params"],
            ResBlock(32, 0.0, 8, s).init(jax.random.key(1), x, temb, False)["params"])
        for s in (1.0, 0.1)
    }
    q = np.asarray(inits[0.1][0]["q"]["kernel"])
    assert q.shape == (64, 64) and q.std() == pytest.approx(np.sqrt(0.1 / 64), rel=0.05)
    assert np.abs(q).max() <= np.sqrt(3 * 0.1 / 64)
    flat = {
        s: {
            jax.tree_util.keystr(path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(p)[0]
        }
        for s, p in inits.items()
    }
    nin = [
        k
        for k in flat[1.0]
        if k.endswith(
            ("['q']['kernel']", "['k']['kernel']", "['v']['kernel']", "['skip']['kernel']")
        )
    ]
    assert len(nin) == 4
    for k, v in flat[1.0].items():
        np.testing.assert_allclose(
            flat[0.1][k], np.sqrt(0.1) * v if k in nin else v, rtol=1e-6, err_msg=k
        )
    # The UNet hands its field to every block (seen while tracing init, nothing computed).
    seen = []

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, (AttnBlock, ResBlock)):
            seen.append(context.module.nin_init_scale)
        return next_fun(*args, **kwargs)

    m = nets.DDPMUNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4,
                      nin_init_scale=0.1)
    with nn.intercept_methods(spy):
        jax.eval_shape(m.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32),
                       jax.ShapeDtypeStruct((1,), jnp.float32))
    assert len(seen) >= 10 and set(seen) == {0.1}


def test_tiny_unet_forward_and_dropout(tiny_ddpm):
    m, params, x, t, apply = tiny_ddpm
    y = apply(params, x, t)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y))) and float(jnp.std(y)) > 1e-3
    np.testing.assert_array_equal(y, apply(params, x, t))  # deterministic in eval mode
    a = apply(params, x, t, train=True, rngs={"dropout": jax.random.key(2)})
    b = apply(params, x, t, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(
        a, apply(params, x, t, train=True, rngs={"dropout": jax.random.key(2)})
    )
    # Each example is processed independently (GroupNorm normalises per example): changing the
    # others leaves its output unchanged.
    for i in range(3):
        np.testing.assert_allclose(
            apply(params, _changed_elsewhere(x, i, jax.random.key(9 + i)), t)[i],
            y[i],
            rtol=1e-5,
            atol=1e-6,
        )


def test_unet_rejects_bad_shapes(tiny_ddpm):
    m, params, x, t, _ = tiny_ddpm
    with pytest.raises(ValueError, match="square"):
        jax.eval_shape(m.apply, params, jnp.zeros((3, 8, 4, 1)), t)
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(nets.DDPMUNet(ch=16, ch_mult=(1, 2, 2, 2), num_groups=8).init,
                       jax.random.key(0), jnp.zeros((1, 12, 12, 1)), jnp.zeros((1,)))
    with pytest.raises(ValueError, match="t must have shape"):
        jax.eval_shape(m.apply, params, x, t[:2])


def test_ddpm_sinusoidal_embedding_formula():
    e = nets.SinusoidalEmbedding(8).apply({}, jnp.array([3.0]))
    half = 4
    w = np.exp(-np.log(10000) * np.arange(half) / (half - 1))
    np.testing.assert_allclose(e[0], np.concatenate([np.sin(3 * w), np.cos(3 * w)]), rtol=1e-6)


# -------------------------------------------------------------------------------- DDPM++ (SongUNet)
TINY = dict(
    model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0
)
# Encoder skips of TINY on 8x8 inputs: enc_8x8_conv, enc_8x8_block0, enc_4x4_down, enc_4x4_block0.


@pytest.fixture(scope="module")
def tiny_song():
    m = SongUNet(**TINY, label_dim=10, label_dropout=0.0)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 2))
    c = jnp.array([-1.0, 0.3, 2.0])
    labels = jnp.array([0, 3, 9])
    return m, _random_params(m, x, c, labels), x, c, labels


def test_songunet_forward_labels_and_determinism(tiny_song):
    m, params, x, c, labels = tiny_song
    apply = jax.jit(m.apply)
    y = apply(params, x, c, labels)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_array_equal(y, apply(params, x, c, labels))
    # int labels are one-hot encoded: the same as passing the one-hot matrix.
    np.testing.assert_allclose(
        apply(params, x, c, jax.nn.one_hot(labels, 10)), y, rtol=1e-5, atol=1e-5
    )
    # The label matters; None means all-zero labels (EDM's convention).
    assert not np.allclose(apply(params, x, c, jnp.array([1, 3, 9]))[0], y[0])
    np.testing.assert_allclose(
        apply(params, x, c, None), apply(params, x, c, jnp.zeros((3, 10))), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(_label_matrix(None, 10, 3), jnp.zeros((1, 10)))
    # Per-example processing: changing the other examples leaves an example's output unchanged.
    for i in range(3):
        np.testing.assert_allclose(
            apply(params, _changed_elsewhere(x, i, jax.random.key(9 + i)), c, labels)[i],
            y[i],
            rtol=1e-5,
            atol=1e-5,
        )


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
        jax.eval_shape(
            SongUNet(**TINY, label_dim=10).init, jax.random.key(0), x, c, jnp.zeros((3, 7))
        )
    with pytest.raises(ValueError, match="needs 4 entries"):
        jax.eval_shape(
            SongUNet(**TINY, skip_connections=(True, False)).init, jax.random.key(0), x, c
        )
    with pytest.raises(ValueError, match="not encoder resolutions"):
        jax.eval_shape(SongUNet(**TINY, keep_skips_at=(16,)).init, jax.random.key(0), x, c)
    with pytest.raises(ValueError, match="noise_labels"):
        jax.eval_shape(m.apply, params, x, c[:2])


def _skip_tangents(m, params, x, c, routes):
    """Compiled once: for `routes` [(producer, consumer, delta shape), ...], the output's derivative
    (B, H, W, C) in a direction v added to the output of encoder module `producer` and subtracted
    again from the input of `consumer` (the next module on the main path), so the only route left
    from that delta to the output is the producer's skip connection. Returns f(route index, v) ->
    tangent."""
    def out(deltas):
        def interceptor(next_fun, args, kwargs, context):
            name = context.module.name if context.method_name == "__call__" else None
            for (producer, consumer, _), d in zip(routes, deltas):
                if name == producer:
                    return next_fun(*args, **kwargs) + d
                if name == consumer:
                    args = (args[0] - d,) + tuple(args[1:])
            return next_fun(*args, **kwargs)
        with nn.intercept_methods(interceptor):
            return m.apply(params, x, c)

    zeros = tuple(jnp.zeros(shape) for _, _, shape in routes)
    tangent = jax.jit(lambda ts: jax.jvp(out, (zeros,), (ts,)))

    def f(i, v):
        primal, t = tangent(tuple(v if j == i else jnp.zeros_like(z) for j, z in enumerate(zeros)))
        return primal, t
    return f


@pytest.mark.parametrize("drop", [False, True])
def test_disabled_skip_makes_output_independent_of_that_activation(drop):
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    c = jnp.array([0.1, -0.5])
    on = SongUNet(**TINY)
    off = SongUNet(**TINY, skip_connections=(True, False, True, True), drop_disabled_skips=drop)
    assert (
        nets.count_params(off, x.shape, c.shape) < nets.count_params(on, x.shape, c.shape)
    ) == drop
    params = _random_params(off, x, c)
    # Route 0: enc_8x8_conv's skip (kept); route 1: enc_8x8_block0's skip (switched off).
    routes = [("enc_8x8_conv", "enc_8x8_block0", (2, 8, 8, 16)),
              ("enc_8x8_block0", "enc_4x4_down", (2, 8, 8, 16))]
    tangent = _skip_tangents(off, params, x, c, routes)
    v = jax.random.normal(jax.random.key(7), (2, 8, 8, 16))
    y, kept = tangent(0, v)
    _, disabled = tangent(1, v)
    # a kept skip carries its activation to the output ...
    assert float(jnp.max(jnp.abs(kept))) > 1e-3
    np.testing.assert_array_equal(disabled, 0.0)  # ... a switched-off one nothing at all
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))


def test_keep_skips_at_equals_the_boolean_mask():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    c = jnp.array([0.1, -0.5])
    a = SongUNet(**TINY, keep_skips_at=(4,))
    b = SongUNet(**TINY, skip_connections=(False, False, True, True))
    params = _random_params(a, x, c)
    # The same computation, operation for operation (so the same outputs for any weights).
    assert str(jax.make_jaxpr(a.apply)(params, x, c)) == str(jax.make_jaxpr(b.apply)(params, x, c))
    assert a.kept_skips(8) == (False, False, True, True)
    assert str(jax.make_jaxpr(a.apply)(params, x, c)) != str(
        jax.make_jaxpr(SongUNet(**TINY).apply)(params, x, c)
    )
