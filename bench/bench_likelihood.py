"""ODE likelihood of the tutorial's 75 x 75 grid at t = 0.15, exact divergence, rtol = atol = 1e-5:
diffmem versus the PyTorch tutorial code (scipy RK45) on the same network weights, in one run.

    python bench/bench_likelihood.py [--points=5625] [--solvers=dopri5,tsit5,bosh3]

Both answers are compared with a tight float64 diffmem solution (rtol = atol = 1e-10) of the same
network. Target (issue 3): >= 3x faster than the reference (aim 10x) with no worse accuracy; compile
time apart. diffmem solves every point with its own adaptive steps (vmapped; the reference solves
the grid as one system); the table gives diffmem's steps per point (mean / max) from the solver
statistics.
"""
import argparse
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def torch_to_flax(state_dict) -> dict:
    """The reference ScoreNet's weights as diffmem ScoreMLP params (Linear (out, in) -> kernel (in,
    out))."""
    import jax.numpy as jnp
    sd = {k: v.detach().numpy() for k, v in state_dict.items()}
    dense = {"time_dense_0": "time_embed.1", "time_dense_1": "time_embed.3", "hidden_0": "hidden.0",
             "hidden_1": "hidden.2", "hidden_2": "hidden.4", "output": "output"}
    p = {
        k: {"kernel": jnp.asarray(sd[v + ".weight"].T), "bias": jnp.asarray(sd[v + ".bias"])}
        for k, v in dense.items()
    }
    p["input_proj_kernel"] = jnp.asarray(sd["input_proj.weight"].T)
    p["input_proj_bias"] = jnp.asarray(sd["input_proj.bias"])
    p["norm"] = {"scale": jnp.asarray(sd["hidden.5.weight"]),
                 "bias": jnp.asarray(sd["hidden.5.bias"])}
    p["fourier"] = {"freqs": jnp.asarray(sd["time_embed.0.freqs"])}
    return {"params": p}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=5625)
    ap.add_argument("--solvers", default="dopri5@1e-5,dopri5@3e-6,tsit5@3e-6,bosh3@1e-5",
                    help="solver@tolerance list (rtol = atol); the reference uses 1e-5")
    ap.add_argument("--reference", default=common.DEFAULT_REFERENCE)
    a = ap.parse_args()
    ref, why = common.load_reference(a.reference)
    if ref is None:
        sys.exit(f"reference needed for the weights and the side-by-side figure: {why}")
    import torch
    torch.manual_seed(0)
    net = ref.ScoreNet()
    g = torch.linspace(-1.5, 1.5, 75)
    grid_t = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)[: a.points]
    ref_ll, ref_s, ref_nfe = ref.ode_lik(net, grid_t, eps=0.15)
    params = torch_to_flax(net.state_dict())

    import diffrax
    import jax
    import jax.numpy as jnp
    from diffmem import likelihood, nets, sde as sde_lib
    print("machine:", common.machine())
    sde = sde_lib.VESDE()
    model = nets.ScoreMLP(sde.marginal_std)
    grid = jnp.asarray(grid_t.numpy())

    def solve(solver, rtol, atol, x):
        score = lambda z, t: model.apply(params, z, t)
        return likelihood.log_likelihood(
            score, sde, x, t_eval=0.15, solver=solver, rtol=rtol, atol=atol, return_stats=True
        )

    solvers = {"dopri5": diffrax.Dopri5(), "tsit5": diffrax.Tsit5(), "bosh3": diffrax.Bosh3()}
    results = {}
    for spec in a.solvers.split(","):
        name, _, tol = spec.partition("@")
        tol = float(tol or 1e-5)
        f = jax.jit(functools.partial(solve, solvers[name], tol, tol))
        t = time.perf_counter()
        jax.block_until_ready(f(grid))
        first = time.perf_counter() - t
        best, (ll, stats) = common.best_time_and_result(f, grid, warmup=False)
        if np.any(np.asarray(stats["result"]) != 0):
            sys.exit(
                f"{name} at tol {tol:g}: {int(np.sum(np.asarray(stats['result']) != 0))} solves "
                f"failed"
            )
        steps = np.asarray(stats["num_steps"])
        results[f"{name}, tol {tol:g}"] = (np.asarray(ll, np.float64), best, first - best,
                                           f"{steps.mean():.0f} / {steps.max()}")

    jax.config.update("jax_enable_x64", True)
    params64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
    score64 = lambda z, t: model.apply(params64, z, t)
    tight = np.asarray(
        jax.jit(
            lambda x: likelihood.log_likelihood(
                score64, sde, x, t_eval=0.15, rtol=1e-10, atol=1e-10
            )
        )(grid.astype(jnp.float64))
    )
    ref_err = np.abs(np.asarray(ref_ll, np.float64) - tight).max()
    rows = [
        ("torch reference, scipy RK45", f"{ref_s:.2f}", "-", str(ref_nfe), "-", f"{ref_err:.2e}",
         "1.00x")
    ]
    for name, (ll, s, comp, steps) in results.items():
        rows.append((f"diffmem, diffrax {name}", f"{s:.2f}", f"{comp:.1f}", "-", steps,
                     f"{np.abs(ll - tight).max():.2e}", f"{ref_s / s:.2f}x"))
    print(
        f"log-likelihood of {a.points} grid points at t = 0.15, exact divergence (reference rtol = "
        f"atol = 1e-5)"
    )
    print(
        common.table(
            rows,
            ("solver", "seconds", "compile s", "ref nfev", "steps/point", "max |err| vs float64",
             "speed-up"),
        )
    )


if __name__ == "__main__":
    main()
