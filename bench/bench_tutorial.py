"""The tutorial's circle model, diffmem versus the PyTorch tutorial code, in one run: training and
sampling.

    # steps/s at K = 9 and K = 1000, a 3-model run, EM
    python bench/bench_tutorial.py
    python bench/bench_tutorial.py --full_steps=50000 # the whole tutorial run end to end (several
        minutes)

Targets (issue 2): >= 5x the reference at K = 9 (batch 9), >= 1.2x at K = 1000 (batch 500), the
whole three-model run (K = 2, 9, 1000; 50,000 steps each) >= 2x faster end to end, and 1,500
Euler-Maruyama samples of 1,000 steps >= 5x faster.

diffmem runs the plain math (issue 12 item 3); each row is measured without and with the one opt-in
CPU policy (`bin/train.py --cpu_policy`, diffmem/cpu_parallel.py), so the table shows what the
policy buys. EM runs as `bin/sample.py` does (`sampling.sample_sharded`: fixed blocks of
SAMPLE_BLOCK seeds, the price of batch-independent bits), beside one whole-batch call for
comparison.

Every training run, diffmem's and the reference's, is a fresh process, as a user runs it (diffmem's
starts as bin/train.py does). The reference runs twice, before and after diffmem's measurements, and
its better figures are the ones compared; the 3-model reference time is extrapolated from its steady
steps/s, while diffmem's is the wall time of `train.train` (compilation and checkpoints included).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def diffmem_steps_per_s(
    arg: str, steps: int, policy: bool, steps_per_call: int = 1000
) -> tuple[float, float]:
    """(steady-state steps/s, wall seconds end to end incl. compile and checkpoints) of bin/train's
    trainer, in a fresh process that starts as bin/train.py does (with --cpu_policy when
    `policy`)."""
    run = subprocess.run(
        [sys.executable, os.path.abspath(__file__), f"--worker={arg}", f"--steps={steps}",
         f"--steps_per_call={steps_per_call}"]
        + (["--policy"] if policy else []),
        capture_output=True,
        text=True,
    )
    if run.returncode:
        raise RuntimeError(f"diffmem worker {arg} failed:\n{run.stderr[-3000:]}")
    out = json.loads(run.stdout.strip().splitlines()[-1])
    return out["rate"], out["wall"]


def _train_worker(arg: str, steps: int, steps_per_call: int, policy: bool) -> None:
    from diffmem import configlib, train
    c = configlib.load_config_file(os.path.join(common.REPO, "configs/circle.py") + ":" + arg)
    c.steps, c.steps_per_call, c.log_every, c.ckpt_every = (steps, steps_per_call, steps_per_call,
                                                            steps)
    if policy:
        train.use_one_cpu_thread_if_small(c)  # as bin/train.py --cpu_policy
    workdir = tempfile.mkdtemp(prefix="bench_train_")
    try:
        t = time.perf_counter()
        train.train(c, workdir, progress=False)
        wall = time.perf_counter() - t
        rates = [
            json.loads(line)["steps_per_s"] for line in open(os.path.join(workdir, "metrics.jsonl"))
        ][1:]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rates.sort()
    print(json.dumps({"rate": rates[len(rates) // 2], "wall": wall}))


def diffmem_em_seconds(n: int = 1500, steps: int = 1000) -> tuple[float, float, float]:
    """(seconds per run after compilation, compile seconds, seconds of one whole-batch call) of
    diffmem's EM sampler on the tutorial net, run as bin/sample.py runs it (`sample_sharded`, fixed
    blocks)."""
    import jax
    import jax.numpy as jnp
    from diffmem import devices, nets, sampling, sde as sde_lib
    sde = sde_lib.VESDE()
    model = nets.ScoreMLP(sde.marginal_std)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.ones((1,)))
    score = lambda x, t: model.apply(params, x, t)  # as builders.score_fn
    sampler = lambda s: sampling.euler_maruyama(
        score, sde, sampling.tutorial_init(s, 2, sde), s, steps, shared_time=True
    )
    mesh = devices.data_mesh(jax.devices()[:1])
    seeds = jnp.arange(n)
    run = lambda s: sampling.sample_sharded(sampler, s, mesh)
    t = time.perf_counter()
    jax.block_until_ready(run(seeds))
    compile_s = time.perf_counter() - t
    best = common.best_time(run, seeds)
    whole = common.best_time(jax.jit(sampler), seeds)
    return best, compile_s - best, whole


def gemm_floor_seconds(n: int = 1500, steps: int = 1000) -> tuple[float, float | None]:
    """Seconds for the matrix products alone of an EM run, by XLA and by torch: per step the three n
    x 128 x 128 products of diffmem's MLP at a shared time (input_proj's 2 x 128 one is negligible).
    No sampler can run the whole EM faster than this."""
    import jax
    import jax.numpy as jnp
    # Orthogonal factors keep the iterate's scale (a shrinking one would end in slow subnormal
    # floats).
    w = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (3, 128, 128)))[0]
    run = jax.jit(lambda x: jax.lax.scan(lambda x, _: (((x @ w[0]) @ w[1]) @ w[2], None), x, None,
                                         length=steps)[0])
    ours = common.best_time(run, jnp.ones((n, 128)))
    code = (
        "import time, torch\n"
        "w = torch.linalg.qr(torch.randn(3, 128, 128))[0]; x = torch.ones(%d, 128); best = 1e9\n"
        "with torch.no_grad():\n"
        "    for _ in range(4):\n"
        "        t = time.perf_counter(); y = x\n"
        "        for _ in range(%d): y = ((y @ w[0]) @ w[1]) @ w[2]\n"
        "        best = min(best, time.perf_counter() - t)\n"
        "print(best)\n" % (n, steps)
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return ours, float(run.stdout.split()[-1]) if run.returncode == 0 else None


def reference_figures(path: str, steps: int) -> dict:
    """The reference's steps/s at K = 2, 9, 1000 and its EM seconds, measured in a fresh process (as
    a user runs it): in a process where JAX has started its thread pool, torch ran its K = 9 steps
    23% slower (588 vs 451 steps/s, one measurement)."""
    code = (
        "import importlib.util, json\n"
        f"spec = importlib.util.spec_from_file_location('torch_tutorial_reference', {path!r})\n"
        "ref = importlib.util.module_from_spec(spec); spec.loader.exec_module(ref)\n"
        "out = {}\n"
        f"for k in (2, 9, 1000):\n    ema, out[k] = ref.train(k, {steps})\n"
        "out['em'] = ref.em_sample(ema)[1]\n"
        "print(json.dumps(out))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(run.stdout.strip().splitlines()[-1])
    return {"rate": {k: out[str(k)] for k in (2, 9, 1000)}, "em": out["em"]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ref_steps", type=int, default=3000, help="reference training steps per K")
    p.add_argument("--steps", type=int, default=6000, help="diffmem steps per measurement")
    p.add_argument(
        "--full_steps",
        type=int,
        default=10000,
        help="steps per model for the 3-model run (50000 = the tutorial; reference extrapolated)",
    )
    p.add_argument("--reference", default=common.DEFAULT_REFERENCE)
    # internal: one diffmem training run, JSON on stdout
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--policy", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--steps_per_call", type=int, default=1000, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return _train_worker(a.worker, a.steps, a.steps_per_call, a.policy)
    ref, why = common.load_reference(a.reference)
    before = reference_figures(a.reference, a.ref_steps) if ref is not None else None
    print("machine:", common.machine())
    if ref is None:
        print("reference skipped:", why)
    plain = {k: diffmem_steps_per_s(f"k={k}", a.steps, False)[0] for k in (9, 1000)}
    policy = {k: diffmem_steps_per_s(f"k={k}", a.steps, True)[0] for k in (9, 1000)}
    _, wall_plain = diffmem_steps_per_s("k=2+9+1000", a.full_steps, False)
    _, wall_policy = diffmem_steps_per_s("k=2+9+1000", a.full_steps, True)
    em, em_compile, em_whole = diffmem_em_seconds()
    ref_rate, ref_em = {}, None
    if before is not None:
        # The machine is shared: the reference runs before and after diffmem and keeps its better
        # figures.
        after = reference_figures(a.reference, a.ref_steps)
        ref_rate = {k: max(before["rate"][k], after["rate"][k]) for k in (2, 9, 1000)}
        ref_em = min(before["em"], after["em"])
    ratio = lambda num, den: f"{num / den:.2f}x" if num and den else "-"
    fmt = lambda v, spec: format(v, spec) if v else "-"
    rows = [
        (f"train K={k} (batch {min(k, 500)}), steps/s", f"{plain[k]:.0f}", f"{policy[k]:.0f}",
         ratio(policy[k], plain[k]), fmt(ref_rate.get(k), ".0f"), ratio(plain[k], ref_rate.get(k)),
         ratio(policy[k], ref_rate.get(k)))
        for k in (9, 1000)
    ]
    ref_wall = sum(a.full_steps / ref_rate[k] for k in (2, 9, 1000)) if ref_rate else None
    rows.append(
        (f"3 models x {a.full_steps} steps, s (ref extrapolated)", f"{wall_plain:.1f}",
         f"{wall_policy:.1f}", ratio(wall_plain, wall_policy), fmt(ref_wall, ".1f"),
         ratio(ref_wall, wall_plain), ratio(ref_wall, wall_policy))
    )
    rows.append(
        ("EM 1,500 samples x 1,000 steps, s", f"{em:.2f} (+{em_compile:.1f} compile)", "same",
         "1.00x", fmt(ref_em, ".2f"), ratio(ref_em, em), ratio(ref_em, em))
    )
    print(
        common.table(
            rows,
            ("workload", "diffmem plain", "with --cpu_policy", "policy buys", "torch reference",
             "plain vs ref", "policy vs ref"),
        )
    )
    print(f"EM as one whole-batch call instead of sample_sharded's fixed blocks: {em_whole:.2f} s "
          f"(blocks cost {ratio(em, em_whole)} of that)")
    floor, torch_floor = gemm_floor_seconds()
    print(
        f"EM floor, its 3 x (1500 x 128 x 128) matrix products per step alone: {floor:.2f} s in "
        f"XLA, "
        f"{fmt(torch_floor, '.2f')} s in torch"
        + (f"; 5x the reference EM would be {ref_em / 5:.2f} s" if ref_em else "")
    )


if __name__ == "__main__":
    main()
