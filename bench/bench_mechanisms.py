"""Mechanism measurements on the digits network (configs/digits.py's DDPM UNet, random weights: the
cost does not depend on them), in one run:

  1. critical times: denoiser rows evaluated per second inside `image_critical_times` (every sample,
     trial and scan time of a block in one call; delta huge so every scan runs to the end of the
     grid) beside a plain jitted evaluation of the same network on batches of the same size;
  2. Jacobian rank of 256 digits states (n = 64): dense jacfwd + exact SVD + 99% rule (target: < 1
     minute on 2 cores).

    python bench/bench_mechanisms.py [--samples=32] [--times=8] [--states=256]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--times", type=int, default=8, help="first scan times of range(1, 1000, 25)")
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--states", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=32, help="states per jacfwd call")
    a = ap.parse_args()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from diffmem import builders, configlib
    from diffmem.metrics import critical_time as ct
    from diffmem.metrics import jacobian

    print("machine:", common.machine())
    config = configlib.load_config_file("configs/digits.py:k=256")
    # (256, 8, 8, 1) in [-1, 1]
    data = builders.model_specs(config)[0].data
    net = builders.build_model(config, data.shape[1:])
    params = net.init(jax.random.key(0), jnp.asarray(data[:1]), jnp.ones((1,)))
    denoiser = builders.denoiser(config, net, params)
    out = {"machine": common.machine()}

    # 1. critical times
    ts = ct.IMAGE_TIMES[: a.times]
    x = data[: a.samples]
    kw = dict(delta=1e9, trials=a.trials, ts=ts, rows_per_call=a.rows)
    ct.image_critical_times(denoiser, x, **kw)                                # compile
    t0 = time.perf_counter()
    res = ct.image_critical_times(denoiser, x, **kw)
    dt = time.perf_counter() - t0
    # masked rows are computed too
    rows = a.samples * a.trials * len(ts) * min(20, max(ts))
    assert np.all(res["time"] == ts[-1])
    plain = jax.jit(denoiser)
    xb = jnp.asarray(np.resize(data, (a.rows // a.trials * a.trials,) + data.shape[1:]))
    sb = jnp.full(xb.shape[:1], 0.5)
    plain(xb, sb).block_until_ready()
    reps = 5
    t1 = time.perf_counter()
    for _ in range(reps):
        plain(xb, sb).block_until_ready()
    plain_rate = reps * xb.shape[0] / (time.perf_counter() - t1)
    out["critical_times"] = dict(samples=a.samples, trials=a.trials, times=len(ts), seconds=dt,
                                 rows_per_s=rows / dt, plain_rows_per_s=plain_rate,
                                 batch=int(xb.shape[0]))
    print(common.table([("image_critical_times (DDIM scan)", f"{rows / dt:,.0f}", f"{dt:.2f}"),
                        (f"plain jit(D) on {xb.shape[0]} rows", f"{plain_rate:,.0f}", "")],
                       ("digits UNet", "rows/s", "seconds")))

    # 2. Jacobian rank of 256 states
    jax.config.update("jax_enable_x64", False)
    states = data[: a.states]
    t0 = time.perf_counter()
    r = jacobian.rank_vs_snr(denoiser, states="forward", data=states, sigmas=[0.5], chunk=a.chunk,
                             dtype=jnp.float32)
    dt = time.perf_counter() - t0
    out["jacobian"] = dict(states=int(r["rank"].size), n=int(r["n"]), seconds=dt,
                           median_rank_over_n=float(np.median(r["rank_over_n"])))
    print(
        f"Jacobian rank of {r['rank'].size} states (n = {r['n']}): {dt:.1f} s including "
        f"compilation "
        f"(target < 60 s on 2 cores); median rank/n {np.median(r['rank_over_n']):.3f}"
    )
    os.makedirs(os.path.join(common.REPO, "bench", "results"), exist_ok=True)
    with open(os.path.join(common.REPO, "bench", "results", "bench_mechanisms.json"), "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
