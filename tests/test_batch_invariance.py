"""Sample i depends on seed i alone, bit for bit, whatever the batch size, device count or job split.

The same seeds are sampled in one batch of 600 and in batches of 1, 7 and 100 (other rows, other positions
in the batch, other job splits), on 1 and on 8 devices, for the tutorial's toy MLP and a small image
denoiser; the samples must be equal to the last bit.
"""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffmem import builders, configlib, nets, precond, sampling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = np.arange(1000, 1600)  # the batch of 600
# (batch size, first seed index) of the smaller jobs: each lands at other positions than in the batch of 600.
JOBS = [(1, 0), (1, 299), (1, 599), (7, 3), (7, 593), (100, 250)]


def _mesh(ndev):
    return Mesh(np.asarray(jax.devices()[:ndev]), ("data",))


def _check(run, block=sampling.SAMPLE_BLOCK):
    whole = np.asarray(sampling.sample_sharded(run, SEEDS, _mesh(1), block=block))
    assert np.all(np.isfinite(whole)) and len(np.unique(whole.reshape(len(SEEDS), -1), axis=0)) == len(SEEDS)
    for ndev in (1, 8):
        for size, first in JOBS if ndev == 1 else [(7, 3), (600, 0)]:
            part = np.asarray(sampling.sample_sharded(run, SEEDS[first:first + size], _mesh(ndev), block=block))
            np.testing.assert_array_equal(part, whole[first:first + size], err_msg=f"{size} seeds on {ndev} devices")


def _config(name, **arg):
    return configlib.load_config_file(os.path.join(REPO, "configs", name) + ":" + ",".join(f"{k}={v}" for k, v in arg.items()))


def test_toy_mlp_samples_do_not_depend_on_the_batch():
    config = _config("circle.py", k=9)
    model = builders.build_model(config, (2,))
    sde = builders.build_sde(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.ones((1,)))
    score = builders.score_fn(config, model, params)

    def run(seeds):  # the tutorial's Euler-Maruyama, one time shared by the batch (as the "em" sampler)
        return sampling.euler_maruyama(score, sde, sampling.tutorial_init(seeds, 2, sde), seeds, 20, eps=1e-3,
                                       shared_time=True)
    _check(run)


class _SmallImageNet(nn.Module):
    """A small image network F(x_in, noise_label) with the operations of diffmem's UNets: sinusoidal noise
    embedding, 3x3 convolutions, group norm, SiLU, a residual block."""

    @nn.compact
    def __call__(self, x, noise_label):
        emb = nn.silu(nn.Dense(16)(nets.SinusoidalEmbedding(16)(noise_label)))
        h = nn.Conv(16, (3, 3))(x) + nn.Dense(16)(emb)[:, None, None, :]
        h = h + nn.Conv(16, (3, 3))(nn.silu(nn.GroupNorm(4)(h)))
        return nn.Conv(x.shape[-1], (3, 3))(nn.silu(nn.GroupNorm(4)(h)))


def test_image_denoiser_samples_do_not_depend_on_the_batch():
    net = _SmallImageNet()
    params = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.ones((1,)))
    denoiser = precond.EDM().denoiser(lambda x, c: net.apply(params, x, c))  # EDM's D(x, sigma)

    def run(seeds):  # EDM's stochastic sampler (Algorithm 2): per-sample noise at every step
        x = sampling.initial_noise(seeds, (8, 8, 1), std=80.0)
        return sampling.edm_heun(denoiser, x, seeds, num_steps=3, sigma_min=0.002, sigma_max=80.0,
                                 S_churn=10.0)
    _check(run, block=32)
