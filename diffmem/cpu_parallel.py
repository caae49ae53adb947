"""diffmem's one opt-in CPU policy: `bin/train.py --cpu_policy` (off by default).

What it does: a toy config whose batches are all small (< SMALL_BATCH rows) trains on one XLA CPU
thread (NPROC=1 before JAX starts). A toy MLP step at batch 9 is a chain of microsecond kernels, and
XLA's CPU runtime handing them (and its partitioned optimizer loops) between threads costs more than
a second core gives; bench/bench_tutorial.py prints what it buys beside the plain run
(bench/results/bench_tutorial.txt).

What it keeps: the model code is the plain math whatever the policy, and sample i depends on seed i
alone, bit for bit, whatever the batch size, device count or job split: samplers run in fixed
per-device blocks (`sampling.sample_sharded`), which no CPU setting changes. The policy only changes
how training is scheduled on the cores; a run resumed with the same policy replays the same steps.

What went (each made a row's arithmetic depend on the batch, or relied on experimental options): the
fused input_proj/hidden_0 map above a row threshold, float32 polynomial sin/cos, splitting large
batches over cores, Eigen dots through an experimental XLA option, and a packed-integer sort for the
epoch permutation.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from typing import MutableMapping

import jax

__all__ = ["SMALL_BATCH", "num_cores", "one_thread_for_small_batches"]

# rows per step below which one XLA thread trains a toy MLP faster (2-core measurement)
SMALL_BATCH = 500


def num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def one_thread_for_small_batches(
    max_rows: int, environ: MutableMapping[str, str] = os.environ
) -> bool:
    """Give XLA's CPU runtime one thread if every batch of the job has fewer than SMALL_BATCH rows.

    Called (through `train.use_one_cpu_thread_if_small`) before JAX's first computation: it sets
    NPROC=1, the thread count XLA's CPU client reads once, when it creates its thread pools (later
    calls change nothing). It leaves the environment alone, and returns False, for larger batches,
    where the user set NPROC, where several host devices are requested (a data-parallel mesh), where
    an accelerator plugin may be used, or on a one-core host. Returns True where it set NPROC.
    """
    if max_rows >= SMALL_BATCH or "NPROC" in environ or num_cores() < 2:
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
