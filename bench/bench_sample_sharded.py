"""sample_sharded on 8 CPU devices: one compile loaded on every device vs jax.jit's compile per
device.

    python bench/bench_sample_sharded.py   (sets 8 fake CPU devices itself, as tests/conftest.py)

Times the first call (compile + run) and a second call (run only) of the tutorial toy EM sampler
(circle config, 100 steps) and a small EDM image sampler over 8 devices, beside the reference: the
pre-change dispatch (one `jax.jit` called on each device's block, which XLA compiles once per
device, in threads). Both must give the same bits.
"""
import concurrent.futures
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

import common  # noqa: E402
from diffmem import builders, configlib, precond, sampling  # noqa: E402


def per_device_jit(sampler_fn, seeds, mesh, block):
    """The reference: the pre-change sample_sharded body (jax.jit compiles once per device)."""
    run = jax.jit(sampler_fn)
    rows = block * mesh.devices.size
    padded = np.concatenate([seeds, np.repeat(seeds[-1:], rows - len(seeds))]).astype(np.uint32)
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    shards = jax.device_put(padded, sharding).addressable_shards
    with concurrent.futures.ThreadPoolExecutor(len(shards)) as pool:
        blocks = list(pool.map(lambda s: run(s.data), shards))
    return jax.make_array_from_single_device_arrays(
        (rows,) + blocks[0].shape[1:], sharding, blocks
    )[: len(seeds)]


def toy_sampler():
    config = configlib.load_config_file(os.path.join(common.REPO, "configs", "circle.py") + ":k=9")
    model, sde = builders.build_model(config, (2,)), builders.build_sde(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.ones((1,)))
    score = builders.score_fn(config, model, params)
    return lambda s: sampling.euler_maruyama(
        score, sde, sampling.tutorial_init(s, 2, sde), s, 100, eps=1e-3, shared_time=True
    )


def image_sampler():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, c):
            h = nn.Conv(16, (3, 3))(x) + nn.Dense(16)(c[:, None])[:, None, None, :]
            return nn.Conv(x.shape[-1], (3, 3))(nn.silu(nn.GroupNorm(4)(h)))

    net = Net()
    params = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.ones((1,)))
    den = precond.EDM().denoiser(lambda x, c: net.apply(params, x, c))
    return lambda s: sampling.edm_heun(den, sampling.initial_noise(s, (8, 8, 1), std=80.0), s,
                                       num_steps=5, sigma_min=0.002, sigma_max=80.0, S_churn=10.0)


def timed(fn):
    t = time.perf_counter()
    out = np.asarray(fn())
    return out, time.perf_counter() - t


def main():
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    seeds = np.arange(200)
    rows = []
    for name, make, block in (("toy EM, 100 steps", toy_sampler, 32),
                              ("image EDM Heun, 5 steps", image_sampler, 8)):
        fn_new, fn_ref = make(), make()  # separate objects: no cache shared between the two
        new1, t_new1 = timed(
            lambda: sampling.sample_sharded(fn_new, seeds[: block * 8], mesh, block=block)
        )
        new2, t_new2 = timed(
            lambda: sampling.sample_sharded(fn_new, seeds[: block * 8], mesh, block=block)
        )
        ref1, t_ref1 = timed(lambda: per_device_jit(fn_ref, seeds[:block * 8], mesh, block))
        ref2, t_ref2 = timed(lambda: per_device_jit(fn_ref, seeds[:block * 8], mesh, block))
        same = "yes" if np.array_equal(new1, ref1) and np.array_equal(new2, ref2) else "NO"
        rows.append(
            (name, f"{t_new1:.1f}", f"{t_ref1:.1f}", f"{t_ref1 / t_new1:.1f}x", f"{t_new2:.2f}",
             f"{t_ref2:.2f}", same)
        )
    text = (
        f"{common.machine()}, 8 fake CPU devices; new = one compile loaded on every device, "
        f"ref = jax.jit per device\n"
        + common.table(
            rows,
            ("sampler (8 devices)", "1st call s", "ref 1st s", "speed-up", "2nd call s",
             "ref 2nd s", "same bits"),
        )
    )
    print(text)
    with open(os.path.join(common.RESULTS, "bench_sample_sharded.txt"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
