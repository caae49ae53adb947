"""DDPM UNet training and sampling throughput on this machine, with model FLOPs utilisation against
the jnp.dot 4096 x 4096 float32 GEMM rate measured in the same run, for two configs:

  digits   configs/digits.py's default model (DDPM UNet ch 32, multipliers 1,2, 1 block, attention
           at 4 px, dropout 0.1, 8 groups) on 8x8x1 images, the config's batch 64 (sampling batch
           256);
  cifar10  configs/cifar10.py's default (Pham et al.'s DDPM UNet ch 128, multipliers 1,2,2,2, 2
           blocks, attention at 16 px, dropout 0.1, 35.7M parameters) on 32x32x3 images, batch 8 on
           CPU.

    python bench/bench_unet.py            # about 2-3 minutes on 2 loaded CPU cores
    python bench/bench_unet.py --small    # under a minute: digits, and CIFAR-10 sampling only

The timed training step is the configs' recipe: Ho et al.'s epsilon loss (`losses.ddpm_eps_from_key`
on `sde.ddpm_alpha_bar(1000, 1e-4, 0.02)`, dropout on), its gradient, and the configs' optax Adam
with global-norm clipping (`train.make_optimizer(**config.optim)`); no EMA. FLOPs per step and per
denoiser evaluation are XLA's cost analysis of the compiled functions; utilisation = (FLOPs / time)
/ jnp.dot rate. Sampling: images/s of one batched denoiser evaluation, and what it implies for
DDPM's 1000-step ancestral sampler (1000 evaluations) and EDM's Heun sampler with 18 steps (35
evaluations); the samplers' own arithmetic is negligible beside the network. Parameters are random
(the values do not change the cost), which spares compiling `init`. Figures are appended as one JSON
line to bench/results/bench_unet.json.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CONFIGS = {"digits": ("configs/digits.py", (8, 8, 1)),
           "cifar10": ("configs/cifar10.py", (32, 32, 3))}


def build(name: str):
    """(model, config) of a config file's default DDPM UNet."""
    from diffmem import configlib, nets
    config = configlib.load_config_file(os.path.join(common.REPO, CONFIGS[name][0]))
    m = config.model
    assert m.name == "ddpm_unet", m.name
    model = nets.DDPMUNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                          attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                          num_groups=m.num_groups)
    return model, config


def random_params(model, shape, seed: int = 0):
    """Parameters of init's shapes, drawn on the host (N(0, 0.02^2)) without compiling init."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, *shape), jnp.float32),
                            jax.ShapeDtypeStruct((1,), jnp.float32))
    return jax.tree.map(
        lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape, np.float32)), shapes
    )


def bench_training(model, config, shape, batch: int, steps: int):
    """Compile and time the training step; returns a dict of figures."""
    import jax
    import jax.numpy as jnp
    import optax
    from diffmem import losses, sde, train

    d = config.diffusion
    alpha_bar = jnp.asarray(sde.ddpm_alpha_bar(d.timesteps, d.beta_start, d.beta_end), jnp.float32)
    optimizer = train.make_optimizer(**config.optim)

    def step(params, opt_state, x0, key):
        def objective(p):
            k_loss, k_drop = jax.random.split(key)
            eps_fn = lambda x, t: model.apply(p, x, t, train=True, rngs={"dropout": k_drop})
            return jnp.mean(losses.ddpm_eps_from_key(eps_fn, x0, k_loss, alpha_bar))
        loss, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = random_params(model, shape)
    opt_state = optimizer.init(params)
    x0 = jax.random.uniform(jax.random.key(1), (batch, *shape), jnp.float32, -1.0, 1.0)
    t0 = time.perf_counter()
    compiled = (
        jax.jit(step, donate_argnums=(0, 1))
        .lower(params, opt_state, x0, jax.random.key(2))
        .compile()
    )
    t_compile = time.perf_counter() - t0
    flops = common.flops_of(compiled)
    times = []
    for i in range(1 + steps):  # the first call is a warm-up
        t0 = time.perf_counter()
        params, opt_state, loss = jax.block_until_ready(
            compiled(params, opt_state, x0, jax.random.key(3 + i))
        )
        times.append(time.perf_counter() - t0)
    assert bool(jnp.isfinite(loss)), loss
    best = min(times[1:])
    return dict(train_batch=batch, train_steps_timed=steps, train_compile_s=round(t_compile, 1),
                train_step_s=round(best, 4), train_step_mean_s=round(sum(times[1:]) / steps, 4),
                train_images_per_s=round(batch / best, 2),
                train_gflop_per_step=round(flops / 1e9, 2),
                train_gflops=round(flops / best / 1e9, 1))


def bench_sampling(model, shape, batch: int, repeats: int):
    """Compile and time one batched denoiser evaluation (eval mode); returns a dict of figures."""
    import jax
    import jax.numpy as jnp
    params = random_params(model, shape)
    x = jax.random.normal(jax.random.key(4), (batch, *shape), jnp.float32)
    t = jnp.full((batch,), 500.0)
    t0 = time.perf_counter()
    compiled = (
        jax.jit(lambda p, x, t: model.apply(p, x, t, train=False)).lower(params, x, t).compile()
    )
    t_compile = time.perf_counter() - t0
    flops = common.flops_of(compiled)
    best = common.best_time(compiled, params, x, t, repeats=repeats)
    per_eval = batch / best
    return dict(sample_batch=batch, sample_compile_s=round(t_compile, 1), eval_s=round(best, 4),
                eval_images_per_s=round(per_eval, 2),
                ddpm1000_images_per_s=round(per_eval / 1000, 4),
                edm_heun18_images_per_s=round(per_eval / 35, 3), eval_gflop=round(flops / 1e9, 3),
                eval_gflops=round(flops / best / 1e9, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--small", action="store_true", help="digits, and CIFAR-10 sampling only (under a minute)"
    )
    ap.add_argument(
        "--cifar-batch", type=int, default=8, help="CIFAR-10 training and sampling batch on CPU"
    )
    ap.add_argument(
        "--cifar-steps", type=int, default=2, help="timed CIFAR-10 training steps (after a warm-up)"
    )
    ap.add_argument("--digits-steps", type=int, default=None,
                    help="timed digits training steps after a warm-up (default 10; 5 with --small)")
    a = ap.parse_args()
    from diffmem import nets
    t_start = time.perf_counter()
    print("machine:", common.machine(), f"(load average {os.getloadavg()[0]:.1f})")
    gemm_repeats = 1 if a.small else 3
    gemm_before = common.gemm_gflops(4096, repeats=gemm_repeats)

    results = {}
    for name in ("digits", "cifar10"):
        model, config = build(name)
        shape = CONFIGS[name][1]
        r = dict(params=nets.count_params(model, (1, *shape), (1,)))
        if name == "digits":
            r.update(
                bench_training(model, config, shape, config.batch_size,
                               a.digits_steps or (5 if a.small else 10))
            )
            r.update(bench_sampling(model, shape, config.sample.batch, repeats=3 if a.small else 5))
        else:
            if not a.small:
                r.update(bench_training(model, config, shape, a.cifar_batch, a.cifar_steps))
            r.update(bench_sampling(model, shape, a.cifar_batch, repeats=1 if a.small else 2))
        results[name] = r
    gemm_after = common.gemm_gflops(4096, repeats=gemm_repeats)  # shared machine: bracket the runs
    gemm = max(gemm_before, gemm_after)
    for r in results.values():
        for kind in ("train", "eval"):
            if f"{kind}_gflops" in r:
                r[f"{kind}_mfu"] = round(r[f"{kind}_gflops"] / gemm, 3)

    print(f"jnp.dot 4096 x 4096 float32: {gemm:.0f} GFLOP/s (best of {gemm_before:.0f} before / "
          f"{gemm_after:.0f} after) = 100% utilisation")
    rows = []
    for name, r in results.items():
        if "train_step_s" in r:
            rows.append(
                (name, f"{r['params']:,}", r["train_batch"], f"{r['train_step_s'] * 1e3:.0f}",
                 f"{r['train_images_per_s']:.1f}", f"{r['train_gflop_per_step']:.1f}",
                 f"{r['train_gflops']:.0f}", f"{r['train_mfu']:.0%}", f"{r['train_compile_s']:.0f}")
            )
        else:
            rows.append(
                (name, f"{r['params']:,}", "-", "skipped (--small)", "-", "-", "-", "-", "-")
            )
    print("training step (epsilon loss + gradient + clipped Adam), best of the timed steps:")
    print(
        common.table(
            rows,
            ("config", "params", "batch", "ms/step", "images/s", "GFLOP/step (XLA)", "GFLOP/s",
             "of jnp.dot", "compile s"),
        )
    )
    rows = [
        (name, r["sample_batch"], f"{r['eval_s'] * 1e3:.1f}", f"{r['eval_images_per_s']:.1f}",
         f"{r['ddpm1000_images_per_s']:.3g}", f"{r['edm_heun18_images_per_s']:.3g}",
         f"{r['eval_gflop']:.2f}", f"{r['eval_gflops']:.0f}", f"{r['eval_mfu']:.0%}")
        for name, r in results.items()
    ]
    print("sampling: one batched denoiser evaluation, and the implied sampler throughput:")
    print(
        common.table(
            rows,
            ("config", "batch", "ms/eval", "images/s per eval", "DDPM 1000 steps images/s",
             "EDM Heun 18 (35 evals) images/s", "GFLOP/eval (XLA)", "GFLOP/s", "of jnp.dot"),
        )
    )
    total = time.perf_counter() - t_start
    print(f"total {total:.0f} s")
    path = common.write_results(
        "bench_unet",
        dict(gemm_gflops=round(gemm, 1), gemm_gflops_before=round(gemm_before, 1),
             gemm_gflops_after=round(gemm_after, 1), total_s=round(total, 1), **results),
        small=a.small,
    )
    print("figures appended to", os.path.relpath(path, common.REPO))


if __name__ == "__main__":
    main()
