"""Bias-free UNet (Kadkhodaie et al.) throughput on this machine, beside the jnp.dot 4096 x 4096
float32 GEMM rate measured in the same run:

  training   the trainer's real step (`train.make_train_step` on `builders` blind loss: batch-norm
             statistics in training mode, Adam, the running sds carried) on 28x28x1 images, their
             UNet scaled to 28 px (64 kernels, 2 blocks, 1,825,024 parameters), `--batch` noisy
             images per step;
  sampling   one batched eval-mode denoiser call, and a real Kadkhodaie-Simoncelli run of
             `--ks-iters` iterations (per-iteration cost; the default sampler takes ~662 iterations
             from sigma 1 to 0.01);
  Jacobian   the dense 784 x 784 Jacobian of the 28x28 denoiser in one batched jacfwd, seconds per
             image.

    python bench/bench_bfunet.py        # a few minutes on 2 loaded CPU cores

Utilisation = (XLA's FLOP count / time) / the GEMM rate. Parameters are random (spares compiling
init). Figures are appended to bench/results/bench_bfunet.json.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SHAPE = (28, 28, 1)


def setup(batch: int):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from diffmem import builders, configlib

    config = configlib.load_config_file(
        os.path.join(common.REPO, f"configs/kadkhodaie.py:data=fmnist,batch={batch}")
    )
    model = builders.build_model(config, SHAPE)
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *SHAPE), jnp.float32)
    )
    rng = np.random.default_rng(0)

    def fill(path, s):
        name = str(path[-1].key)
        if name == "kernel":
            return jnp.asarray(
                rng.normal(0, np.sqrt(2 / np.prod(s.shape[:-1])), s.shape), jnp.float32
            )
        return jnp.asarray(np.ones(s.shape) * (0.02 if name == "scale" else 1.0), jnp.float32)
    return config, model, jax.tree_util.tree_map_with_path(fill, shapes)


def bench_training(config, model, variables, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    from diffmem import builders, train
    optimizer = builders.build_optimizer(config)
    step = train.make_train_step(builders.build_loss(config, model), optimizer, 0.0, False)
    state = train.TrainState(
        jnp.zeros((), jnp.int32), variables, variables, optimizer.init(variables)
    )
    x0 = jax.random.uniform(jax.random.key(1), (config.batch_size, *SHAPE), jnp.float32, -1, 1)
    valid = jnp.ones((config.batch_size,))
    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(state, x0, valid, jax.random.key(2)).compile()
    t_compile = time.perf_counter() - t0
    flops = common.flops_of(compiled)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        state, m = jax.block_until_ready(compiled(state, x0, valid, jax.random.key(3 + i)))
        times.append(time.perf_counter() - t0)
    best = min(times[1:])
    return dict(train_batch=config.batch_size, train_compile_s=round(t_compile, 1),
                train_step_s=round(best, 4), train_images_per_s=round(config.batch_size / best, 2),
                train_gflop_per_step=round(flops / 1e9, 2),
                train_gflops=round(flops / best / 1e9, 1))


def bench_sampling(model, variables, batch: int, ks_iters: int) -> dict:
    import jax
    import numpy as np
    from diffmem import sampling
    apply = jax.jit(lambda v, y: y - model.apply(v, y, train=False))
    y = jax.random.uniform(jax.random.key(4), (batch, *SHAPE))
    compiled = (
        jax.jit(lambda v, y: y - model.apply(v, y, train=False)).lower(variables, y).compile()
    )
    flops = common.flops_of(compiled)
    best = common.best_time(compiled, variables, y, repeats=3)
    # A real sampler run, capped at ks_iters iterations (sigma_L tiny so every sample runs all of
    # them).
    run = jax.jit(
        lambda v, seeds: sampling.kadkhodaie_simoncelli(
            lambda u, s: apply(v, u), SHAPE, seeds, sigma_L=1e-9, max_iters=ks_iters
        )
    )
    seeds = np.arange(batch)
    t_ks, r = common.best_time_and_result(run, variables, seeds, repeats=1)
    assert int(r.iterations.min()) == ks_iters, r.iterations
    per_iter = t_ks / ks_iters
    return dict(sample_batch=batch, eval_s=round(best, 4), eval_images_per_s=round(batch / best, 1),
                eval_gflops=round(flops / best / 1e9, 1), ks_iteration_s=round(per_iter, 4),
                ks_iteration_overhead=round(per_iter / best, 2),
                ks662_images_per_s=round(batch / (per_iter * 662), 4))


def bench_jacobian(model, variables, images: int) -> dict:
    import jax
    from diffmem.metrics.jacobian import denoiser_jacobian
    d = lambda y, s: y - model.apply(variables, y, train=False)
    ys = jax.random.uniform(jax.random.key(5), (images, *SHAPE))
    jac = jax.jit(jax.vmap(lambda y: denoiser_jacobian(d, y, 0.1)))
    t, J = common.best_time_and_result(jac, ys, repeats=1)
    assert J.shape == (images, 784, 784)
    # matrix-free top-16 of (J + J^T)/2, same image
    from diffmem.metrics.adaptive_basis import top_eigenpairs
    t_mf, _ = common.best_time_and_result(lambda y: top_eigenpairs(d, y, 0.1, 16), ys[0], repeats=1)
    return dict(jacobian_images=images, jacobian_s_per_image=round(t / images, 3),
                top16_matrix_free_s_per_image=round(t_mf, 3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16, help="noisy images per training step")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (after a warm-up)")
    ap.add_argument("--sample-batch", type=int, default=16)
    ap.add_argument("--ks-iters", type=int, default=20)
    ap.add_argument("--jacobian-images", type=int, default=2)
    a = ap.parse_args()
    from diffmem import nets
    t_start = time.perf_counter()
    print("machine:", common.machine(), f"(load average {os.getloadavg()[0]:.1f})")
    gemm_before = common.gemm_gflops(4096, repeats=2)
    config, model, variables = setup(a.batch)
    r = dict(params=nets.count_params(model, (1, *SHAPE)))
    r.update(bench_training(config, model, variables, a.steps))
    r.update(bench_sampling(model, variables, a.sample_batch, a.ks_iters))
    r.update(bench_jacobian(model, variables, a.jacobian_images))
    gemm_after = common.gemm_gflops(4096, repeats=2)
    gemm = max(gemm_before, gemm_after)
    r["train_mfu"] = round(r["train_gflops"] / gemm, 3)
    r["eval_mfu"] = round(r["eval_gflops"] / gemm, 3)
    print(
        f"jnp.dot 4096 x 4096 float32: {gemm:.0f} GFLOP/s (before {gemm_before:.0f} / after "
        f"{gemm_after:.0f})"
    )
    print(
        common.table(
            [
                ("train step (blind loss, BN stats, Adam)", r["train_batch"],
                 f"{r['train_step_s'] * 1e3:.0f} ms", f"{r['train_images_per_s']:.1f}",
                 f"{r['train_gflops']:.0f}", f"{r['train_mfu']:.0%}"),
                ("denoiser eval", r["sample_batch"], f"{r['eval_s'] * 1e3:.1f} ms",
                 f"{r['eval_images_per_s']:.1f}", f"{r['eval_gflops']:.0f}",
                 f"{r['eval_mfu']:.0%}"),
            ],
            ("bias-free UNet 28x28, 64 kernels, 2 blocks", "batch", "time", "images/s", "GFLOP/s",
             "of jnp.dot"),
        )
    )
    print(
        f"KS sampler: {r['ks_iteration_s'] * 1e3:.1f} ms per iteration of {r['sample_batch']} "
        f"images "
        f"({r['ks_iteration_overhead']:.2f}x one eval) -> {r['ks662_images_per_s']:.3g} images/s "
        f"at 662 iterations"
    )
    print(
        f"Jacobian 784 x 784 (one batched jacfwd over {r['jacobian_images']} images): "
        f"{r['jacobian_s_per_image']:.2f} s per image; matrix-free top-16 eigenpairs of (J + "
        f"J^T)/2 "
        f"(block Krylov, 9 x 24 JVP/VJP pairs): {r['top16_matrix_free_s_per_image']:.2f} s per "
        f"image"
    )
    total = time.perf_counter() - t_start
    print(f"total {total:.0f} s")
    path = common.write_results(
        "bench_bfunet", dict(gemm_gflops=round(gemm, 1), total_s=round(total, 1), **r)
    )
    print("figures appended to", os.path.relpath(path, common.REPO))


if __name__ == "__main__":
    main()
