"""Bias-free networks: published parameter counts, exact homogeneity and Euler's identity,
batch-norm stats."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import nets
from diffmem.nets import bfcnn


@pytest.mark.parametrize(
    "blocks,size,expected", [(3, 80, 7_659_264), (1, 80, 366_080), (2, 80, 1_825_024)]
)
def test_unet_parameter_count_matches_upstream(blocks, size, expected):
    assert (
        nets.count_params(nets.BFUNet(num_kernels=64, num_blocks=blocks), (1, size, size, 1))
        == expected
    )


@pytest.mark.parametrize("layers,expected", [(20, 665_856), (21, 702_784)])
def test_bfcnn_parameter_count_matches_upstream(layers, expected):
    assert nets.count_params(nets.BFCNN(num_layers=layers), (1, 40, 40, 1)) == expected


def test_no_additive_parameters_and_bad_size_message():
    shapes = jax.eval_shape(
        lambda: nets.BFUNet(num_kernels=8, num_blocks=2).init(
            jax.random.key(0), jnp.zeros((1, 8, 8, 1))
        )
    )
    names = [str(p[-1].key) for p, _ in jax.tree_util.tree_leaves_with_path(shapes)]
    assert set(names) == {"kernel", "scale", "running_sd"}
    with pytest.raises(ValueError, match="divisible by 8"):
        nets.BFUNet(num_blocks=3).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


def _random_variables(net, x):
    """Variables of `net` filled with numpy draws (no compiled init): kernels ~ N(0, 2/fan_in),
    gammas ~ 1, running sds ~ exp(N(0, 0.3^2)) > 0, so the test exercises every division."""
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), x))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = str(path[-1].key)
        if name == "kernel":
            return rng.normal(0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
        if name == "scale":
            return 1.0 + 0.2 * rng.normal(size=leaf.shape)
        return np.exp(0.3 * rng.normal(size=leaf.shape))

    return jax.tree_util.tree_map_with_path(
        lambda p, leaf: jnp.asarray(fill(p, leaf), x.dtype), shapes
    )


@pytest.mark.parametrize(
    "net", [nets.BFUNet(num_kernels=4, num_blocks=2), nets.BFCNN(num_layers=4, num_kernels=6)]
)
def test_eval_mode_is_homogeneous_and_satisfies_euler(x64, net):
    y = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1), jnp.float64)
    variables = _random_variables(net, y)
    D = jax.jit(bfcnn.unit_range_denoiser(net, variables))
    d = D(y)
    assert float(jnp.abs(d - y).max()) > 1e-3  # not the identity
    for a in (0.37, 2.5, 40.0):
        np.testing.assert_allclose(D(a * y), a * d, rtol=1e-12, atol=1e-12)
    # (2*64, 2*64), block diagonal
    J = jax.jit(jax.jacfwd(lambda v: D(v.reshape(y.shape)).ravel()))(y.ravel())
    np.testing.assert_allclose(J @ y.ravel(), d.ravel(), rtol=1e-11, atol=1e-12)


def test_train_mode_batch_norm_updates_running_sd(x64):
    x = jax.random.normal(jax.random.key(0), (3, 4, 4, 2), jnp.float64) * jnp.array([0.5, 3.0])
    bn = bfcnn.BFBatchNorm()
    v = bn.init(jax.random.key(1), x, train=False)
    assert float(jnp.abs(v["params"]["scale"]).max()) <= 0.025
    y, new = bn.apply(v, x, train=True, mutable=["batch_stats"])
    sd = np.sqrt(np.asarray(x).reshape(-1, 2).var(axis=0) + 1e-5)
    np.testing.assert_allclose(new["batch_stats"]["running_sd"], 0.9 + 0.1 * sd, rtol=1e-6)
    np.testing.assert_allclose(y, np.asarray(x) * np.asarray(v["params"]["scale"]) / sd, rtol=1e-6)
    y_eval = bn.apply({"params": v["params"], **new}, x, train=False)
    np.testing.assert_allclose(
        y_eval, np.asarray(x) * np.asarray(v["params"]["scale"]) / (0.9 + 0.1 * sd), rtol=1e-6
    )


def test_signed_range_denoiser_maps_units():
    net = nets.BFCNN(num_layers=3, num_kernels=4)
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1), minval=-1, maxval=1)
    variables = _random_variables(net, x)
    d01 = jax.jit(bfcnn.unit_range_denoiser(net, variables))
    d = jax.jit(bfcnn.signed_range_denoiser(net, variables))(x, jnp.ones(2))
    np.testing.assert_allclose(d, 2 * d01((x + 1) / 2) - 1, atol=1e-6)


def test_blind_loss_noise_law_and_reduction():
    from diffmem import losses
    x0 = jax.random.uniform(jax.random.key(0), (3, 4, 4, 1))
    key = jax.random.key(5)
    # A perfect residual (f(y) = y - x0, i.e. the noise itself) has zero loss; f = 0 costs sum
    # (sigma z)^2.
    xr = jnp.repeat(x0, 4, axis=0)
    perfect, aux = losses.blind_denoising_from_key(lambda y: (y - xr, "aux"), x0, key, copies=4)
    assert aux == "aux" and float(jnp.abs(perfect).max()) < 1e-10
    zero, _ = losses.blind_denoising_from_key(
        lambda y: (jnp.zeros_like(y), None), x0, key, copies=4
    )
    sigma, z = losses.blind_noise(key, xr)
    expected = (
        (np.asarray(sigma)[:, None] ** 2 * np.asarray(z).reshape(12, -1) ** 2)
        .sum(1)
        .reshape(3, 4)
        .mean(1)
    )
    np.testing.assert_allclose(zero, expected, rtol=1e-5)
    # sqrt(255 sigma) ~ U[0, sqrt(255)]: Kolmogorov-Smirnov distance of 4000 draws.
    s, _ = losses.blind_noise(jax.random.key(1), jnp.zeros((4000, 1)))
    u = np.sort(np.sqrt(255 * np.asarray(s)) / np.sqrt(255))
    assert np.abs(u - (np.arange(1, 4001) - 0.5) / 4000).max() < 0.03 and float(s.max()) <= 1.0


def test_upconv_is_pytorch_conv_transpose_k2_s2():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    up = bfcnn.UpConv2(6)
    v = up.init(jax.random.key(0), x)
    w = np.asarray(v["params"]["kernel"])  # (a, b, c, o)
    ref = np.zeros((2, 6, 8, 6), np.float32)
    for i in range(3):
        for j in range(4):
            for a in range(2):
                for b in range(2):
                    ref[:, 2 * i + a, 2 * j + b] = x[:, i, j] @ w[a, b]
    np.testing.assert_allclose(up.apply(v, x), ref, rtol=1e-5, atol=1e-5)
    # PyTorch's ConvTranspose2d fan_in quirk: fan_in = out channels x k^2 = 256 -> std sqrt(2 /
    # 256).
    big = bfcnn.UpConv2(64).init(jax.random.key(1), jnp.zeros((1, 2, 2, 128)))["params"]["kernel"]
    assert abs(float(jnp.std(big)) - np.sqrt(2 / 256)) < 0.01


def test_kadkhodaie_bf_cnn_config_follows_upstream_training_and_the_loader_variant_by_overrides():
    """configs/kadkhodaie.py with arch=bf_cnn is upstream main.py's BF-CNN (21 layers, ReLU after
    the first conv, 702,784 parameters); the overrides in its docstring give init_BF_CNN's (20,
    linear, 665,856)."""
    import os
    from diffmem import builders, configlib
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = configlib.load_config_file(os.path.join(repo, "configs", "kadkhodaie.py") + ":arch=bf_cnn")
    assert (c.model.num_layers, c.model.first_layer_linear) == (21, False)
    net = builders.build_model(c, (8, 8, 1))
    assert (net.num_layers, net.first_layer_linear) == (21, False)
    assert nets.count_params(net, (1, 8, 8, 1)) == 702_784
    c.model.num_layers, c.model.first_layer_linear = 20, True
    loader = builders.build_model(c, (8, 8, 1))
    assert (loader.num_layers, loader.first_layer_linear) == (20, True)
    assert nets.count_params(loader, (1, 8, 8, 1)) == 665_856
