"""Shared bits of the benchmarks: the reference script, the machine's GEMM rate, and table
printing."""
from __future__ import annotations

import importlib.util
import os
import platform
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REFERENCE = os.path.join(REPO, "..", "shared", "reference", "torch_tutorial.py")


def load_reference(path: str = DEFAULT_REFERENCE):
    """Import the PyTorch tutorial reference as a module, or return None (with the reason) if
    impossible."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, "torch is not installed (pip install torch==2.13.0)"
    if not os.path.exists(path):
        return None, f"reference script not found at {path}"
    spec = importlib.util.spec_from_file_location("torch_tutorial_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, ""


def gemm_gflops(n: int = 4096, repeats: int = 3) -> float:
    """float32 GFLOP/s of jnp.dot on n x n matrices on this machine, now (best of `repeats`)."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def machine() -> str:
    import jax
    return (f"{cpu_model()}, {os.cpu_count()} cores, jax {jax.__version__} "
            f"on {jax.devices()[0].platform}")


def cpu_model() -> str:
    """The CPU's model name (figures differ between CPUs of the same core count), else the
    architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(rows: list[tuple], header: tuple) -> str:
    cols = list(zip(*([header] + [tuple(str(c) for c in r) for r in rows])))
    widths = [max(len(c) for c in col) for col in cols]
    line = lambda r: " | ".join(str(c).ljust(w) for c, w in zip(r, widths))
    return "\n".join([line(header), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows])


RESULTS = os.path.join(REPO, "bench", "results")


def best_time(f, *args, repeats: int = 3, warmup: bool = True) -> float:
    """Best wall-clock seconds of `f(*args)` over `repeats` calls (after one untimed call if
    `warmup`), waiting for every array in the result."""
    return best_time_and_result(f, *args, repeats=repeats, warmup=warmup)[0]


def best_time_and_result(f, *args, repeats: int = 3, warmup: bool = True):
    """`best_time`, and the result of the last call."""
    import jax
    if warmup:
        jax.block_until_ready(f(*args))
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t)
    return best, out


def flops_of(compiled) -> float:
    """FLOPs XLA's cost analysis counts for one call of a compiled
    (`jax.jit(f).lower(...).compile()`) function."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per device
    return float(cost["flops"])


def write_results(name: str, figures: dict, *, small: bool = False) -> str:
    """Append one JSON line of `figures` (plus the machine, its load and the time) to
    bench/results/<name>.json; returns the path. The file is the committed record of measured runs,
    one line per run."""
    import json
    os.makedirs(RESULTS, exist_ok=True)
    record = {"bench": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
              "loadavg_1m": round(os.getloadavg()[0], 2), "small": small, **figures}
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    return path
