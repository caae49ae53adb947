"""Bias-free blind denoisers of Kadkhodaie et al. (ICLR 2024) and Mohan et al. (2020): no additive
constant.

    net = BFUNet(num_kernels=64, num_blocks=3)      # their UNet: 7,659,264 parameters at 1 channel
    # BF-CNN: 665,856 parameters (21 layers: 702,784)
    net = BFCNN(num_layers=20)
    # the noise residual f(y) (eval mode: running sd)
    f = net.apply(variables, y)
    D = unit_range_denoiser(net, variables)         # D(y) = y - f(y), images in [0, 1]
    # the common D(x (B,*S), sigma (B,)) on [-1, 1] data
    D = signed_range_denoiser(net, variables)

The networks are blind (they never see sigma; the argument is accepted and ignored so they fit the
trainer's `init(key, x, sigma)`). Every layer is positively homogeneous: 3x3 convolutions and 2x2
transposed convolutions without bias, ReLU, average pooling, and a batch norm that only divides by a
standard deviation (the 2024 variant, C.2 of the notes). In eval mode the sd is the running one, so
D(a y) = a D(y) for a > 0 and
D(y) = J(y) y (Euler's identity for piecewise-linear, homogeneous maps).

Units: the nets are trained on [0, 1] images (Kadkhodaie's range; noise sigma in the same units).
diffmem's datasets live in [-1, 1], so the loss maps x -> (x + 1) / 2 and the common denoiser is
D_[-1,1](x) = 2 D_[0,1]((x + 1) / 2) - 1. Homogeneity holds in [0, 1] units only: D_[-1,1] is
affine, not homogeneous, in its own units (the shift by 1 is an additive constant).
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["BFBatchNorm", "UpConv2", "BFUNet", "BFCNN", "BLIND_NETS", "unit_range_denoiser",
           "signed_range_denoiser"]

# PyTorch's kaiming_normal_(a=0, mode="fan_in"): N(0, 2 / fan_in), not truncated (flax's he_normal
# is).
_KAIMING = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# For ConvTranspose2d PyTorch reads fan_in from weight dim 1, the *output* channels (times k^2);
# replicated.
_KAIMING_CONVT = nn.initializers.variance_scaling(2.0, "fan_in", "normal", in_axis=-1, out_axis=-2)


def _gamma_init(key, shape, dtype=jnp.float32):
    # BF_batchNorm (2024): N(0, 1) * (2 / 9 / 64) clamped to +-0.025 (2/9/64 = 0.0035, not its
    # square root).
    return jnp.clip(jax.random.normal(key, shape, dtype) * (2.0 / 9.0 / 64.0), -0.025, 0.025)


class BFBatchNorm(nn.Module):
    """Bias-free batch norm (Kadkhodaie et al. 2024, `BF_batchNorm`): y = gamma x / sd, no mean
    subtracted.

    train: sd = sqrt(biased variance over (N, H, W) + eps), and running_sd <- (1 - m) running_sd + m
    sd (collection "batch_stats", starts at 1); eval: sd = running_sd. x (..., C) -> (..., C).
    """
    momentum: float = 0.1
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        gamma = self.param("scale", _gamma_init, (c,))
        running = self.variable("batch_stats", "running_sd", lambda: jnp.ones((c,), jnp.float32))
        if not train:
            return gamma * x / running.value
        sd = jnp.sqrt(jnp.var(x, axis=tuple(range(x.ndim - 1))) + self.eps)
        if not self.is_initializing():
            running.value = (
                1.0 - self.momentum
            ) * running.value + self.momentum * jax.lax.stop_gradient(sd)
        return gamma * x / sd


def _avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling, stride 2, as a reshape and mean (XLA's CPU reduce_window gradient is
    slow)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class UpConv2(nn.Module):
    """ConvTranspose2d(k=2, s=2, no bias) as PyTorch defines it: out[2i+a, 2j+b, o] = sum_c x[i, j,
    c] W[a, b, c, o]. The 2x2 stride-2 windows do not overlap, so it is one matmul and a reshape
    (XLA's CPU runs the input-dilated convolution flax's ConvTranspose lowers to several times
    slower)."""
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", _KAIMING_CONVT, (2, 2, x.shape[-1], self.features))
        n, h, w, _ = x.shape
        y = jnp.einsum("nhwc,abco->nhawbo", x, kernel)
        return y.reshape(n, 2 * h, 2 * w, self.features)


def _conv(features: int, name: str | None = None) -> nn.Conv:
    return nn.Conv(features, (3, 3), padding=1, use_bias=False, kernel_init=_KAIMING, name=name)


class BFUNet(nn.Module):
    """Kadkhodaie et al.'s bias-free UNet (`code/network.py::UNet`), returning the residual f(y).

    Stage b (0..num_blocks-1) has num_kernels * 2^b channels; each has `num_enc_conv` 3x3 convs (the
    very first without batch norm), 2x2 average pooling down, `num_mid_conv` convs in the middle,
    then per stage a 2x2 stride-2 transposed conv (no bias), concatenation with the skip and
    `num_dec_conv` convs, the last of the top stage mapping to the input channels without norm or
    ReLU. H and W must be divisible by 2^num_blocks. x (B, H, W, C) in [0, 1] units -> f (B, H, W,
    C).
    """
    num_kernels: int = 64
    num_blocks: int = 3
    num_enc_conv: int = 2
    num_mid_conv: int = 2
    num_dec_conv: int = 2

    @nn.compact
    def __call__(
        self, x: jax.Array, sigma: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        del sigma  # blind
        h, w, c_out = x.shape[-3:]
        div = 2 ** self.num_blocks
        if h % div or w % div:
            raise ValueError(
                f"BFUNet with num_blocks={self.num_blocks} needs H and W divisible by {div}; "
                f"got {h}x{w}. Use fewer blocks (8x8: <= 3, 28x28: <= 2) or resize the images."
            )

        def conv_bn_relu(z, ch):
            return nn.relu(BFBatchNorm()(_conv(ch)(z), train))

        skips = []
        for b in range(self.num_blocks):
            ch = self.num_kernels * 2 ** b
            for i in range(self.num_enc_conv):
                x = nn.relu(_conv(ch)(x)) if (b == 0 and i == 0) else conv_bn_relu(x, ch)
            skips.append(x)
            x = _avg_pool2(x)
        for _ in range(self.num_mid_conv):
            x = conv_bn_relu(x, self.num_kernels * 2 ** self.num_blocks)
        for b in reversed(range(self.num_blocks)):
            ch = self.num_kernels * 2 ** b
            x = UpConv2(ch)(x)
            x = jnp.concatenate([x, skips[b]], axis=-1)
            for i in range(self.num_dec_conv):
                last = b == 0 and i == self.num_dec_conv - 1
                x = _conv(c_out)(x) if last else conv_bn_relu(x, ch)
        return x


class BFCNN(nn.Module):
    """BF-CNN (`code/network.py::BF_CNN`): conv (ReLU unless first_layer_linear), (num_layers - 2) x
    [conv, bias-free BN, ReLU], conv back to the input channels; all 3x3, no bias. Returns f(y).

    num_layers 20 (`init_BF_CNN`, 665,856 params at 1 channel) or 21 (`main.py`, 702,784).
    """
    num_layers: int = 20
    num_kernels: int = 64
    first_layer_linear: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, sigma: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        del sigma  # blind
        c_out = x.shape[-1]
        x = _conv(self.num_kernels)(x)
        if not self.first_layer_linear:
            x = nn.relu(x)
        for _ in range(self.num_layers - 2):
            x = nn.relu(BFBatchNorm()(_conv(self.num_kernels)(x), train))
        return _conv(c_out)(x)


BLIND_NETS = {"bf_unet": BFUNet, "bf_cnn": BFCNN}


def unit_range_denoiser(net: nn.Module, variables) -> Callable[[jax.Array], jax.Array]:
    """D(y) = y - f(y) in eval mode, y (B, H, W, C) in [0, 1] units (positively homogeneous)."""
    return lambda y: y - net.apply(variables, y, train=False)


def signed_range_denoiser(net: nn.Module, variables):
    """The common denoiser D(x (B,*S), sigma (B,)) -> (B,*S) on diffmem's [-1, 1] images:
    D(x) = 2 D_[0,1]((x + 1) / 2) - 1, sigma ignored (blind; sigma in [-1, 1] units is twice the [0,
        1] one).
    Homogeneous in [0, 1] units only (see the module docstring)."""
    d01 = unit_range_denoiser(net, variables)
    return lambda x, sigma=None: 2.0 * d01((x + 1.0) / 2.0) - 1.0
