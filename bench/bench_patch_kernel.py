"""The streamed patch log-sum-exp kernel (diffmem.machines) beside a plain float32 GEMM of the same
size, measured in the same run, for digits (8x8) and Fashion-MNIST (28x28) sizes; and the kernel's
working memory against the chunk size.

    # digits (1,797 images) and FMNIST-sized (1,000 images)
    python bench/bench_patch_kernel.py
    # fewer queries and training images (a quick check)
    python bench/bench_patch_kernel.py --small

Target (issue 16): the kernel at >= 60% of the float32 GEMM rate on CPU. FLOPs counted (the useful
work): the distance GEMM 2 M R D plus the weighted sum 2 M R V, with M query rows (batch x pixels
for ELS), R
reference patches, D = k^2 C, V = C values per patch. The reference GEMM is (M x D) @ (D x n), n the
kernel's references per chunk, materialised and timed over the same total number of references (the
same shapes the kernel multiplies; a single M x R product would not fit in memory at FMNIST sizes).
Rows interleave kernel and GEMM timings (best of 3) because the host is shared. Memory: XLA's
temporary buffer size of the compiled machine for several chunk sizes beside the M x R logits a
non-streamed version would hold; and each patch machine's seconds per call on digits, with XLA's
defaults and with the machines' options. "ceiling" is t_GEMM / (t_GEMM + t_exp), t_exp the time of
the exp alone of as many logits (no maximum, no sums): the share of the GEMM rate that a softmax
must stay below when it computes the logits and then their exps, as any built of XLA operations does
(XLA's CPU backend does not fuse elementwise work into a GEMM); with k^2 C = 9 or 25 the exp, not
the GEMM, takes most of the time. Each is measured twice: compiled with XLA's defaults and with the
options the machines compile with (`patch_kernel.compiler_options()`: 512-bit vectors on AVX-512
CPUs); the GEMM reference is the faster of the two. Results: bench/results/bench_patch_kernel.txt
(appended) and .json (one line per run).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffmem.machines import local_score as ls  # noqa: E402
from diffmem.machines import patch_kernel as pk  # noqa: E402


def digits(n):
    from sklearn.datasets import load_digits
    x = load_digits().images[:n].astype(np.float32) / 8.0 - 1.0
    return x[..., None]


def synthetic(n, size, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 1)).astype(np.float32)


def case(name, train, batch, k, chunk, machine="els"):
    """One row: kernel rate, same-shape GEMM rate, ratio."""
    n, h, w, c = train.shape
    fn = {"els": ls.equivariant, "ls": ls.local}[machine]
    per_image = (h - k + 1) * (w - k + 1) if machine == "els" else 1
    rows = batch * h * w if machine == "els" else batch
    groups = 1 if machine == "els" else h * w
    refs = n * per_image
    d = k * k * c
    train_j, x, sigma = noised_batch(train, batch)
    # what the machines compile with (512-bit vectors on AVX-512 CPUs)
    opts = pk.compiler_options() or None
    kernel_fn = lambda t, x, s: fn(t, x, s, k, chunk)
    kernel = jax.jit(kernel_fn)
    kernel_opt = jax.jit(kernel_fn, compiler_options=opts)
    # as ELS does
    imgs = pk.images_per_chunk(rows * groups, per_image, chunk, d if machine == "els" else 0)
    n_chunk = imgs * per_image
    num_chunks = -(-n // imgs)
    rb = pk.even_blocks(rows, pk.block_rows(groups, n_chunk))    # and the kernel its row blocks
    blocks = -(-rows // rb)
    flops = 2.0 * groups * rows * num_chunks * n_chunk * (d + c)
    # the reference: the same (groups x) (rb x D) @ (D x n_chunk) products, each materialised in
    # full as the loop's carry (nothing to fuse away), as many as the kernel multiplies
    q = jax.random.normal(jax.random.key(0), (groups, rb, d), jnp.float32)
    p = jax.random.normal(jax.random.key(1), (num_chunks * blocks, groups, n_chunk, d), jnp.float32)

    def gemm_fn(q, p):
        def body(carry, pi):
            return jnp.einsum("gbd,gnd->gbn", q, pi), None
        return jax.lax.scan(body, jnp.zeros((groups, rb, n_chunk), jnp.float32), p)[0]
    gemm_flops = 2.0 * groups * rb * blocks * num_chunks * n_chunk * d

    def exp_fn(q, p):  # the exp of as many logits as the GEMMs make, and nothing else
        logits = jnp.einsum("gbd,gnd->gbn", q, p[0])

        def body(carry, i):
            return jnp.exp(logits - i.astype(jnp.float32) * 1e-7), None
        return jax.lax.scan(body, jnp.zeros_like(logits), jnp.arange(p.shape[0]))[0]
    progs = dict(kernel=(kernel, (train_j, x, sigma)), kernel_opt=(kernel_opt, (train_j, x, sigma)),
                 gemm=(jax.jit(gemm_fn), (q, p)),
                 gemm_opt=(jax.jit(gemm_fn, compiler_options=opts), (q, p)),
                 exp=(jax.jit(exp_fn), (q, p)),
                 exp_opt=(jax.jit(exp_fn, compiler_options=opts), (q, p)))
    t = interleaved_best(progs)
    tg = min(t["gemm"], t["gemm_opt"])  # the faster GEMM of the two programs is the reference
    rg = gemm_flops / tg / 1e9
    rk, rko = flops / t["kernel"] / 1e9, flops / t["kernel_opt"] / 1e9
    return dict(case=name, machine=machine, k=k, rows=rows * groups, refs=refs, d=d,
                chunk_refs=n_chunk, row_block=rb, compiler_options=opts or {},
                kernel_s=round(t["kernel"], 4), kernel_opt_s=round(t["kernel_opt"], 4),
                kernel_gflops=round(rk, 2), kernel_opt_gflops=round(rko, 2),
                gemm_gflops=round(rg, 2), ratio=round(rk / rg, 3), ratio_opt=round(rko / rg, 3),
                exp_floor_ratio=round(tg / (tg + t["exp"]), 3),
                exp_floor_ratio_opt=round(tg / (tg + t["exp_opt"]), 3))


def machine_rows(train, batch, k):
    """Seconds per call of each patch machine on `batch` noised training images, compiled with XLA's
    defaults and with the machines' options, interleaved."""
    args = noised_batch(train, batch)
    opts = pk.compiler_options() or None
    out = []
    for name, fn in (("els", ls.equivariant), ("bbels", ls.boundary_broken), ("ls", ls.local),
                     ("pspc_square", ls.pspc_square)):
        call = lambda t, x, s, fn=fn: fn(t, x, s, k, None)
        t = interleaved_best(
            dict(plain=(jax.jit(call), args), opts=(jax.jit(call, compiler_options=opts), args))
        )
        out.append(
            dict(machine=name, k=k, batch=batch, plain_s=round(t["plain"], 4),
                 opts_s=round(t["opts"], 4))
        )
    return out


def noised_batch(train, batch):
    """(training set, the first `batch` training images plus noise 0.3, sigma 0.5 per image) as
    device arrays."""
    n, h, w, c = train.shape
    x = jnp.asarray(
        train[:batch]
        + 0.3 * np.random.default_rng(1).normal(size=(batch, h, w, c)).astype(np.float32)
    )
    return jnp.asarray(train), x, jnp.full((batch,), 0.5, jnp.float32)


def interleaved_best(progs: dict, rounds: int = 5) -> dict:
    """{name: best seconds} of each (function, args) in `progs`, compiled first, then timed in turns
    for `rounds` rounds so that all see the same load of the shared host."""
    for f, a in progs.values():
        jax.block_until_ready(f(*a))
    times = {name: [] for name in progs}
    for _ in range(rounds):
        for name, (f, a) in progs.items():
            times[name].append(common.best_time(f, *a, repeats=1, warmup=False))
    return {name: min(v) for name, v in times.items()}


def memory_rows(train, batch, k, chunks):
    """XLA temp bytes of the compiled ELS for each chunk (images per chunk) beside the full logits
    matrix."""
    n, h, w, c = train.shape
    x = jax.ShapeDtypeStruct((batch, h, w, c), jnp.float32)
    s = jax.ShapeDtypeStruct((batch,), jnp.float32)
    t = jax.ShapeDtypeStruct(train.shape, jnp.float32)
    full = batch * h * w * n * (h - k + 1) * (w - k + 1) * 4
    out = []
    for ch in chunks:
        comp = jax.jit(lambda t, x, s: ls.equivariant(t, x, s, k, ch)).lower(t, x, s).compile()
        mem = comp.memory_analysis()
        temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
        out.append(dict(chunk_images=ch, temp_mb=None if temp is None else round(temp / 2**20, 2),
                        full_logits_mb=round(full / 2**20, 1)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    small = args.small
    dig = digits(400 if small else 1797)
    fm = synthetic(100 if small else 1000, 28)
    t0 = time.time()
    rows = [case("digits 8x8, ELS k=3", dig, 16 if small else 64, 3, None),
            case("digits 8x8, ELS k=5", dig, 16 if small else 64, 5, None),
            case("digits 8x8, LS k=5", dig, 16 if small else 64, 5, None, machine="ls"),
            case("FMNIST 28x28, ELS k=5", fm, 2 if small else 8, 5, None),
            case("FMNIST 28x28, ELS k=9", fm, 2 if small else 8, 9, None)]
    machines = machine_rows(dig, 16 if small else 64, 5)
    mem = memory_rows(fm, 2 if small else 8, 5, (1, 4, 16, 64))
    gemm_square = common.gemm_gflops(2048)
    header = ("case", "rows M", "refs R", "D", "refs/chunk", "rows/pass", "GEMM GFLOP/s",
              "kernel s", "ratio", "ceiling", "kernel s (opts)", "ratio (opts)", "ceiling (opts)")
    text = [
        f"# bench_patch_kernel {time.strftime('%Y-%m-%d %H:%M')} ({'small' if small else 'full'}), "
        f"{common.machine()}, load {os.getloadavg()[0]:.1f}",
        "ratio: the kernel's rate over the GEMM's; ceiling: t_GEMM / (t_GEMM + t_exp of every "
        "logit), the most "
        "a GEMM-then-exp softmax can reach; (opts): compiled with the machines' options "
        f"{pk.compiler_options() or '(none on this host: XLA defaults)'}",
        common.table(
            [
                (r["case"], r["rows"], r["refs"], r["d"], r["chunk_refs"], r["row_block"],
                 r["gemm_gflops"], r["kernel_s"], r["ratio"], r["exp_floor_ratio"],
                 r["kernel_opt_s"], r["ratio_opt"], r["exp_floor_ratio_opt"])
                for r in rows
            ],
            header,
        ),
        f"square 2048 float32 GEMM (jnp.dot) now: {gemm_square:.1f} GFLOP/s",
        f"each patch machine on {machines[0]['batch']} digits (k = 5), seconds per call:",
        common.table(
            [
                (m["machine"], m["plain_s"], m["opts_s"], round(m["plain_s"] / m["opts_s"], 2))
                for m in machines
            ],
            ("machine", "XLA defaults", "machines' options", "speed-up"),
        ),
        "memory (FMNIST-sized ELS k=5, XLA temp buffers vs the full query x reference logits):",
        common.table([(m["chunk_images"], m["temp_mb"], m["full_logits_mb"]) for m in mem],
                     ("images/chunk", "temp MB", "full logits MB")),
        f"total {time.time() - t0:.0f} s",
        "",
    ]
    print("\n".join(text))
    os.makedirs(common.RESULTS, exist_ok=True)
    with open(os.path.join(common.RESULTS, "bench_patch_kernel.txt"), "a") as f:
        f.write("\n".join(text) + "\n")
    common.write_results("bench_patch_kernel", dict(rows=rows, machines=machines, memory=mem,
                                                    gemm_square_gflops=gemm_square), small=small)


if __name__ == "__main__":
    main()
