"""Running diffmem under `jax.distributed`: several processes (hosts), one global device mesh.

Every process runs the same program on the same inputs; the meshes of `train`,
`sampling.sample_sharded` and `metrics.distances.knn` span all processes' devices. Three rules keep
that correct:
  * start-up: `initialize()` before any JAX computation (`bin/*.py --distributed` calls it);
  * results: `to_host(x)` turns a global array into the same numpy array on every process (an array
    whose shards live on other processes cannot be read with np.asarray);
  * files: only process 0 writes shared files (`diffmem.atomic.write` does nothing elsewhere).
"""
from __future__ import annotations

import jax
import numpy as np

from diffmem import atomic
from diffmem.errors import DiffmemError

__all__ = ["initialize", "is_main_process", "to_host", "broadcast_from_main", "sync"]


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 300) -> None:
    """Join the jax.distributed cluster; without arguments JAX detects SLURM, Open MPI or a TPU pod
    (or reads JAX_COORDINATOR_ADDRESS). On CPU the processes talk through gloo (JAX's default).
    timeout_s: how long to wait for every process to connect. Idempotent."""
    if jax.distributed.is_initialized():
        return
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id,
                                   initialization_timeout=timeout_s)
    except (RuntimeError, ValueError, TypeError) as e:
        raise DiffmemError(
            f"jax.distributed.initialize failed ({type(e).__name__}: {e}). Run under SLURM / Open "
            f"MPI, or give "
            "--coordinator=HOST:PORT --num_processes=N --process_id=I (the same coordinator on "
            "every process, "
            "ids 0..N-1), before any JAX computation."
        ) from e


def is_main_process() -> bool:
    """Process 0: the one that writes shared files and shows progress (the rule of
    `atomic.is_writer`)."""
    return atomic.is_writer()


def to_host(x) -> np.ndarray:
    """The full value of `x` as numpy on every process, whatever its sharding.

    Fully addressable arrays (one process) and fully replicated ones are read locally; an array
    sharded over several processes is all-gathered (a collective: every process must call this
    together).
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_shards[0].data)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def broadcast_from_main(value):
    """`value` as computed on process 0, on every process (a collective; a no-op with one
    process)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return multihost_utils.broadcast_one_to_all(value)


def sync(name: str) -> None:
    """Wait until every process reaches the barrier `name` (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
