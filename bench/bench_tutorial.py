"""The tutorial's circle model, diffmem versus the PyTorch tutorial code, in one run: training and sampling.

    python bench/bench_tutorial.py                    # steps/s at K = 9 and K = 1000, a 3-model run, EM
    python bench/bench_tutorial.py --full_steps=50000 # the whole tutorial run end to end (several minutes)

Targets (issue 2): >= 5x the reference at K = 9 (batch 9), >= 1.2x at K = 1000 (batch 500), the whole
three-model run (K = 2, 9, 1000; 50,000 steps each) >= 2x faster end to end, and 1,500 Euler-Maruyama
samples of 1,000 steps >= 5x faster.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def diffmem_steps_per_s(arg: str, steps: int, steps_per_call: int = 1000) -> tuple[float, float]:
    """(steady-state steps/s, wall seconds end to end incl. compile and checkpoints) of bin/train's trainer."""
    from diffmem import configlib, train
    c = configlib.load_config_file(os.path.join(common.REPO, "configs/circle.py") + ":" + arg)
    c.steps, c.steps_per_call, c.log_every, c.ckpt_every = steps, steps_per_call, steps_per_call, steps
    workdir = tempfile.mkdtemp(prefix="bench_train_")
    try:
        t = time.perf_counter()
        train.train(c, workdir, progress=False)
        wall = time.perf_counter() - t
        rates = [json.loads(l)["steps_per_s"] for l in open(os.path.join(workdir, "metrics.jsonl"))][1:]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rates.sort()
    return rates[len(rates) // 2], wall


def diffmem_em_seconds(n: int = 1500, steps: int = 1000) -> tuple[float, float]:
    """(seconds per run after compilation, compile seconds) of diffmem's EM sampler on the tutorial net."""
    import jax
    import jax.numpy as jnp
    from diffmem import nets, sampling, sde as sde_lib
    sde = sde_lib.VESDE()
    model = nets.ScoreMLP(sde.marginal_std)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.ones((1,)))
    score = lambda x, t: model.apply(params, x, t)
    run = jax.jit(lambda s: sampling.euler_maruyama(score, sde, sampling.tutorial_init(s, 2, sde), s, steps,
                                                    shared_time=True))
    seeds = jnp.arange(n)
    t = time.perf_counter()
    run(seeds).block_until_ready()
    compile_s = time.perf_counter() - t
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        run(seeds).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best, compile_s - best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ref_steps", type=int, default=3000, help="reference training steps per K")
    p.add_argument("--steps", type=int, default=6000, help="diffmem steps per measurement")
    p.add_argument("--full_steps", type=int, default=10000,
                   help="steps per model for the 3-model run (50000 = the tutorial; reference extrapolated)")
    p.add_argument("--reference", default=common.DEFAULT_REFERENCE)
    a = p.parse_args()
    print("machine:", common.machine())
    ref, why = common.load_reference(a.reference)
    ref_rate, ref_em = {}, None
    if ref is not None:
        for k in (2, 9, 1000):
            ema, ref_rate[k] = ref.train(k, a.ref_steps)
        ref_em = ref.em_sample(ema)[1]
    else:
        print("reference skipped:", why)
    rows = []
    for k in (9, 1000):
        ours, _ = diffmem_steps_per_s(f"k={k}", a.steps)
        r = ref_rate.get(k)
        rows.append((f"train K={k} (batch {min(k, 500)}), steps/s", f"{ours:.0f}", f"{r:.0f}" if r else "-",
                     f"{ours / r:.2f}x" if r else "-"))
    _, wall = diffmem_steps_per_s("k=2+9+1000", a.full_steps)
    if ref_rate:
        ref_wall = sum(a.full_steps / ref_rate[k] for k in (2, 9, 1000))
        rows.append((f"3 models x {a.full_steps} steps, s (ref extrapolated)", f"{wall:.1f}", f"{ref_wall:.1f}",
                     f"{ref_wall / wall:.2f}x"))
    else:
        rows.append((f"3 models x {a.full_steps} steps, s", f"{wall:.1f}", "-", "-"))
    em, em_compile = diffmem_em_seconds()
    rows.append(("EM 1,500 samples x 1,000 steps, s", f"{em:.2f} (+{em_compile:.1f} compile)",
                 f"{ref_em:.2f}" if ref_em else "-", f"{ref_em / em:.2f}x" if ref_em else "-"))
    print(common.table(rows, ("workload", "diffmem", "torch reference", "speed-up")))


if __name__ == "__main__":
    main()
