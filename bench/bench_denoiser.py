"""Empirical optimal denoiser over 50,000 x 3,072 float32 patterns, batch 256: streamed GEMMs versus
the naive all-at-once version and the machine's jnp.dot rate, in one run.

    python bench/bench_denoiser.py [--n=50000] [--chunk=4096]

Target (issue 3): >= 60% of the float32 GEMM rate of jnp.dot on 4096 x 4096, memory bounded by the
chunk. FLOPs counted: the two GEMMs, 2 * 2 * B * N * D.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def timed(f, *args, repeats=3):
    f(*args).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(*args).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=3072)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--chunks", default="2048,4096,8192")
    a = ap.parse_args()
    import jax
    import jax.numpy as jnp
    from diffmem import energy
    print("machine:", common.machine())
    y = jax.random.normal(jax.random.key(0), (a.n, a.d), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (a.batch, a.d), jnp.float32)
    sigma = jnp.full((a.batch,), 20.0)
    flops = 4.0 * a.batch * a.n * a.d
    gemm = common.gemm_gflops(4096)

    def naive(x, s):  # all logits at once: a batch x N matrix
        logits = (
            -jnp.sum((x[:, None, :] - y[None]) ** 2, -1) / (2 * s[:, None] ** 2)
            if a.d <= 64
            else (x @ y.T - 0.5 * jnp.sum(y * y, -1)[None] - 0.5 * jnp.sum(x * x, -1)[:, None])
            / s[:, None] ** 2
        )
        return jax.nn.softmax(logits, axis=-1) @ y

    rows = [("jnp.dot 4096 x 4096", "-", f"{gemm:.0f}", "100%", "-")]
    t = timed(jax.jit(naive), x, sigma)
    rows.append(("naive (B x N logits in memory)", f"{t * 1e3:.0f}", f"{flops / t / 1e9:.0f}",
                 f"{flops / t / 1e9 / gemm:.0%}", f"{a.batch * a.n * 4 / 2**20:.0f} MiB logits"))
    for chunk in map(int, a.chunks.split(",")):
        d = jax.jit(energy.empirical_denoiser(y, chunk))
        t = timed(d, x, sigma)
        rows.append(
            (f"streamed, chunk {chunk}", f"{t * 1e3:.0f}", f"{flops / t / 1e9:.0f}",
             f"{flops / t / 1e9 / gemm:.0%}", f"{a.batch * chunk * 4 / 2**20:.0f} MiB logits")
        )
        ref = jax.jit(naive)(x, sigma)
        err = float(jnp.max(jnp.abs(d(x, sigma) - ref)))
        assert err < 1e-3, err
    print(f"empirical denoiser, N = {a.n}, D = {a.d}, batch {a.batch}")
    print(common.table(rows, ("version", "ms", "GFLOP/s", "of jnp.dot", "working set")))


if __name__ == "__main__":
    main()
