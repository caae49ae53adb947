"""Sample i depends on seed i alone, bit for bit, whatever the batch size, the other seeds, the
device count of the mesh or the job split, within one process setup (`sampling.sample_sharded`'s
docstring says what else the bits depend on: jax version, instruction set, XLA's CPU thread count).

The same seeds are sampled in one batch of 600 and in jobs of 1, 7, 100 and 86 seeds (other rows
around them, other positions in the job, consecutive and scattered seeds), on 1 and on 8 devices,
for the tutorial's toy MLP and a small image denoiser; the samples must be equal to the last bit.
The image denoiser is the sensitive one: XLA's CPU convolution rounds the last image of a batch of
32 differently (a GEMM edge kernel), which `sampling.seed_slots` makes harmless by giving every seed
a fixed slot.
"""
import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffmem import builders, configlib, nets, precond, sampling

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
SEEDS = np.arange(1000, 1600)  # the batch of 600
# Seed indices of the smaller jobs: consecutive runs (each starting elsewhere than a block of the
# batch of 600 does) and one scattered, unordered set; several hold seeds of the last slot of a
# block (seed % block == 31).
JOBS = [
    np.arange(first, first + size)
    for size, first in [(1, 0), (1, 299), (1, 599), (7, 3), (7, 593), (100, 250)]
]
JOBS.append(np.arange(599, 0, -7))  # 86 seeds, descending


def _mesh(ndev):
    return Mesh(np.asarray(jax.devices()[:ndev]), ("data",))


def _check(run, block=sampling.SAMPLE_BLOCK, whole=None):
    if whole is None:
        whole = np.asarray(sampling.sample_sharded(run, SEEDS, _mesh(1), block=block))
    assert np.all(np.isfinite(whole)) and len(
        np.unique(whole.reshape(len(SEEDS), -1), axis=0)
    ) == len(SEEDS)
    for ndev in (1, 8):
        for job in JOBS if ndev == 1 else [JOBS[3], JOBS[-1], np.arange(600)]:
            part = np.asarray(sampling.sample_sharded(run, SEEDS[job], _mesh(ndev), block=block))
            np.testing.assert_array_equal(
                part, whole[job], err_msg=f"{len(job)} seeds from {job[0]} on {ndev} devices"
            )


def test_every_seed_has_a_fixed_slot():
    """Seed s runs in slot s % block of its block; consecutive seeds fill ceil(B / block) blocks
    (rounded up to the device count), as the blocks of a seed range would anyway."""
    for seeds, block, ndev, count in [(np.arange(1000, 1600), 32, 1, 19),
                                      (np.arange(1250, 1350), 32, 1, 4),
                                      (np.arange(1250, 1350), 32, 8, 8), (np.arange(5), 128, 1, 1),
                                      (np.array([7, 39, 71, 8]), 32, 1, 3),
                                      (np.arange(599, 0, -7) + 1000, 32, 1, 3)]:
        blocks, rows = sampling.seed_slots(seeds, block, ndev)
        assert blocks.shape == (count, block) and blocks.dtype == np.uint32
        np.testing.assert_array_equal(blocks.reshape(-1)[rows], seeds)
        np.testing.assert_array_equal(rows % block, seeds % block)
        assert len(np.unique(rows)) == len(seeds)


def _config(name, **arg):
    return configlib.load_config_file(
        os.path.join(REPO, "configs", name) + ":" + ",".join(f"{k}={v}" for k, v in arg.items())
    )


def test_toy_mlp_samples_do_not_depend_on_the_batch():
    config = _config("circle.py", k=9)
    model = builders.build_model(config, (2,))
    sde = builders.build_sde(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.ones((1,)))
    score = builders.score_fn(config, model, params)

    # the tutorial's Euler-Maruyama, one time shared by the batch (as the "em" sampler)
    def run(seeds):
        return sampling.euler_maruyama(
            score, sde, sampling.tutorial_init(seeds, 2, sde), seeds, 20, eps=1e-3, shared_time=True
        )
    _check(run)


class _SmallImageNet(nn.Module):
    """A small image network F(x_in, noise_label) with the operations of diffmem's UNets: sinusoidal
    noise embedding, 3x3 convolutions, group norm, SiLU, a residual block."""

    @nn.compact
    def __call__(self, x, noise_label):
        emb = nn.silu(nn.Dense(16)(nets.SinusoidalEmbedding(16)(noise_label)))
        h = nn.Conv(16, (3, 3))(x) + nn.Dense(16)(emb)[:, None, None, :]
        h = h + nn.Conv(16, (3, 3))(nn.silu(nn.GroupNorm(4)(h)))
        return nn.Conv(x.shape[-1], (3, 3))(nn.silu(nn.GroupNorm(4)(h)))


@functools.cache
def _image_sampler():
    net = _SmallImageNet()
    params = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.ones((1,)))
    denoiser = precond.EDM().denoiser(lambda x, c: net.apply(params, x, c))  # EDM's D(x, sigma)

    def run(seeds):  # EDM's stochastic sampler (Algorithm 2): per-sample noise at every step
        x = sampling.initial_noise(seeds, (8, 8, 1), std=80.0)
        return sampling.edm_heun(denoiser, x, seeds, num_steps=3, sigma_min=0.002, sigma_max=80.0,
                                 S_churn=10.0)
    return run


@functools.cache
def _image_whole():
    """The image denoiser's batch of 600 on one device, in blocks of 32 (one block's last slot is
    rounded differently by XLA's CPU convolution: 19 blocks hold 18 such seeds)."""
    return np.asarray(sampling.sample_sharded(_image_sampler(), SEEDS, _mesh(1), block=32))


def test_image_denoiser_samples_do_not_depend_on_the_batch():
    _check(_image_sampler(), block=32, whole=_image_whole())


def test_a_job_in_another_process_gives_the_same_bits(tmp_path):
    """Jobs run by separate processes with the same setup (host, environment: conftest's XLA_FLAGS
    and compilation cache are inherited) add up to the same samples: a fresh process samples 100 of
    the seeds."""
    out = tmp_path / "job.npy"
    code = (
        "import sys; import numpy as np; sys.path.insert(0, sys.argv[1]); import "
        "test_batch_invariance as t; "
        "np.save(sys.argv[2], np.asarray(t.sampling.sample_sharded(t._image_sampler(), "
        "t.SEEDS[250:350], "
        "t._mesh(1), block=32)))"
    )
    subprocess.run([sys.executable, "-c", code, TESTS, str(out)], check=True, env=dict(os.environ),
                   cwd=REPO, timeout=600)
    np.testing.assert_array_equal(np.load(out), _image_whole()[250:350])
