"""Spreading a toy model's large batches over the cores of a CPU host (the same function, computed faster).

XLA's CPU runtime sends dots to YNNPACK by default, which runs each dot on one core and its neighbours
one after the other; through Eigen, the runtime runs independent operations of a computation on separate
cores. So for a batch worth splitting (>= 250 rows per core, on a host with several cores and one JAX
device) two levers, used together:

  * `compiler_options(rows)`: compile with Eigen dots (YNNPACK fusions off);
  * `split_batch(fn)`: apply the network to the batch as independent slices, one per core.

Measured on 2 cores (AMD EPYC Zen 4), tutorial MLP: training at K = 1000 (batch 500) 340 -> 370 -> ~395
steps/s (Eigen, then split), 1,500 Euler-Maruyama samples 1.0 -> 0.9 s; on 2 Intel Xeon cores 351 -> ~360
-> 368-404 steps/s and 0.99 -> 0.89 -> 0.86 s. At batch 9 YNNPACK is 30% faster,
and a data-parallel mesh already gives every device its own slice, so neither lever applies there.
Accelerators are untouched.

The other way round, a job whose batches are all too small to split runs fastest on one thread
(`one_thread_for_small_batches`): a toy MLP step at batch 9 is a chain of microsecond kernels, and XLA's
CPU runtime handing them (and its partitioned 100k-parameter optimizer loops) between threads costs more
than the second core gives. Measured on 2 cores (Intel Xeon): K = 9 training 3000 -> 3300-3900 steps/s.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import re
from typing import Callable, MutableMapping

import jax
import jax.numpy as jnp

MIN_ROWS = 250  # rows per slice below which splitting costs more than it gains


def num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def num_slices(rows: int) -> int:
    """How many independent slices a batch of `rows` is split into: 1 unless on a single CPU device."""
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return 1
    return _host_slices(rows)


def _host_slices(rows: int) -> int:
    """Slices for `rows` on this host's cores, before asking JAX (which would start its backend)."""
    return max(1, min(num_cores(), rows // MIN_ROWS))


def compiler_options(rows: int) -> dict[str, str] | None:
    """`jax.jit(..., compiler_options=...)` for a computation on batches of `rows` (see the module note);
    None where the default compilation is best or the jaxlib has no YNNPACK option."""
    if num_slices(rows) < 2 or not _has_ynn_option():
        return None
    return dict(_EIGEN_DOTS)


def split_batch(fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`fn(x (B, ...), t (B,) or (1,)) -> (B, ...)` evaluated on `num_slices(B)` slices of the batch and
    concatenated; t of shape (1,) (one time for the batch) is shared by every slice. Row by row the same
    function as fn(x, t) (up to float rounding of the dot kernels); the slices are independent subgraphs that
    XLA's CPU runtime runs concurrently."""
    @functools.wraps(fn)
    def apply(x: jax.Array, t: jax.Array) -> jax.Array:
        n = num_slices(x.shape[0])
        if n == 1:
            return fn(x, t)
        b = [x.shape[0] * i // n for i in range(n + 1)]
        return jnp.concatenate([fn(x[b[i]:b[i + 1]], t if t.shape[0] == 1 else t[b[i]:b[i + 1]])
                                for i in range(n)])
    return apply


def one_thread_for_small_batches(max_rows: int, environ: MutableMapping[str, str] = os.environ) -> bool:
    """Give XLA's CPU runtime one thread if no batch of the job (at most `max_rows` rows) is worth splitting.

    For a script whose whole job is training small-batch toy models (`bin/train.py`), called before JAX's
    first computation: it sets NPROC=1, the thread count XLA's CPU client reads once, when it creates its
    thread pools (later calls change nothing). It leaves the environment alone, and returns False, where
    the batches are worth splitting (`split_batch` uses the cores), where the user set NPROC,
    where several host devices are requested (a data-parallel mesh), where an accelerator plugin may be
    used, or on a one-core host. Returns True where it set NPROC.
    """
    if _host_slices(max_rows) > 1 or "NPROC" in environ or num_cores() < 2:
        return False
    if _host_device_count(environ) > 1 or _accelerator_possible(environ):
        return False
    environ["NPROC"] = "1"
    return True


def _host_device_count(environ: MutableMapping[str, str]) -> int:
    m = re.search(r"--xla_force_host_platform_device_count=(\d+)", environ.get("XLA_FLAGS", ""))
    flag = int(m.group(1)) if m else 1
    return max(flag, int(jax.config.jax_num_cpu_devices))


def _accelerator_possible(environ: MutableMapping[str, str]) -> bool:
    platforms = environ.get("JAX_PLATFORMS", "") or (jax.config.jax_platforms or "")
    if platforms:
        return platforms.split(",")[0].strip() != "cpu"
    # JAX finds PJRT plugins through these entry points and the jax_plugins namespace package.
    return (bool(importlib.metadata.entry_points(group="jax_plugins"))
            or any(importlib.util.find_spec(m) is not None for m in ("jax_plugins", "libtpu")))


_EIGEN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _has_ynn_option() -> bool:
    try:
        jax.jit(lambda x: x + 1, compiler_options=_EIGEN_DOTS).lower(jnp.zeros(2)).compile()
        return True
    except Exception:  # older jaxlib: "No such compile option"
        return False
