"""Sample a per-seed sampler over a device mesh: fixed blocks of seeds, each seed in a fixed slot.

    samples = sample_sharded(lambda seeds: sampler(seeds), seeds, mesh)

`sample_sharded` runs any `seeds (B,) -> samples (B, *S)` function (a sampler of `diffmem.sampling`
bound to its model) over a 1-D device mesh in blocks of `SAMPLE_BLOCK` seeds of one shape, each seed
in slot seed % block of its block (`seed_slots`), so that any split of a seed range across calls,
devices or jobs gives identical samples, bit for bit, on hosts of one setup (its docstring says what
else the bits depend on). `diffmem.sampling` re-exports these names.
"""
from __future__ import annotations

import concurrent.futures
import functools
import re
import threading
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffmem import multihost
from diffmem.errors import InputError

__all__ = ["SAMPLE_BLOCK", "seed_slots", "sample_sharded"]


class _OneBinary:
    """`sampler_fn` compiled once per block shape, for the first device that runs a block, and that
    same binary loaded on every other device (jax.jit alone compiles it once per device: 8 compiles
    on 8 devices). Every device thus runs literally the same machine code as a one-device
    `jax.jit(sampler_fn)`.

    Where the binary cannot be moved (host callbacks in the program, a jax without executable
    serialization, arguments other than the seeds, a CPU program JAX loaded from its persistent
    compilation cache), the other devices fall back to jax.jit's own per-device compile: slower, the
    same bits."""

    def __init__(self, sampler_fn, options: tuple):
        self.jitted = jax.jit(sampler_fn, compiler_options=dict(options) or None)
        self._programs = {}  # (shape, dtype) -> (device, Compiled, serialized binary or None)
        self._loaded = {}  # (shape, dtype, device) -> LoadedExecutable
        self._lock = threading.Lock()

    def _program(self, x: jax.Array):
        key = (x.shape, x.dtype)
        with self._lock:
            if key not in self._programs:
                compiled = self.jitted.lower(x).compile()
                self._programs[key] = (next(iter(x.devices())), compiled, _movable_binary(compiled))
            return self._programs[key]

    def __call__(self, x: jax.Array):
        """Run on one device's block of seeds `x` (a single-device array); the result stays on that
        device."""
        home, compiled, binary = self._program(x)
        device = next(iter(x.devices()))
        if device == home:
            return compiled(x)
        if binary is None:
            return self.jitted(x)
        key = (x.shape, x.dtype, device)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = _load_on(device, binary)
        if self._loaded[key] is None:
            return self.jitted(x)
        outs = self._loaded[key].execute_sharded([x]).disassemble_into_single_device_arrays()
        return compiled.out_tree.unflatten([o[0] for o in outs])


def _movable_binary(compiled) -> bytes | None:
    """The serialized executable of a one-device `Compiled` if it can be loaded on another device as
    it is (one argument, the seeds; every output computed by it; no host callbacks), else None.

    A CPU executable that JAX loaded from its persistent compilation cache
    (JAX_COMPILATION_CACHE_DIR; the tests turn it on) serializes again without its machine code
    (jaxlib 0.10: no ELF object in the bytes), and the copy loaded on another device then fails
    ("Function ... not found"), so such a binary is not moved: the other devices compile (or find in
    the cache) their own, the same bits."""
    try:
        executable = compiled.runtime_executable()
        if (len(executable.get_parameter_layouts()) != 1
                or len(executable.get_output_layouts()) != compiled.out_tree.num_leaves
                or re.search(r'custom_call_target="[^"]*callback', compiled.as_text() or "")):
            return None
        binary = executable.client.serialize_executable(executable)
        if executable.client.platform == "cpu" and b"\x7fELF" not in binary:
            return None
        return binary
    except Exception:  # an older or newer jax without these calls: compile per device instead
        return None


def _load_on(device, binary: bytes):
    """The serialized one-device executable loaded on `device` (no compile), or None if this jax
    cannot."""
    try:
        from jaxlib import xla_client
        options = xla_client.CompileOptions()
        options.device_assignment = xla_client.DeviceAssignment.create(np.array([[device.id]]))
        return device.client.deserialize_executable(
            binary, xla_client.DeviceList((device,)), options
        )
    except Exception:  # another jaxlib's API: jax.jit compiles for this device instead
        return None


@functools.lru_cache(maxsize=8)
def _block_jit(sampler_fn, options: tuple = ()) -> _OneBinary:
    return _OneBinary(sampler_fn, options)


# Seeds per device in every compiled sampler call (see `sample_sharded`); part of what a sample's
# bits depend on.
SAMPLE_BLOCK = 128


def seed_slots(seeds, block: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Where every seed runs: `blocks` (L, block) uint32, each row one compiled call's seeds on one
    device, and `rows` (B,), seed i's row in `blocks.reshape(-1)`. Seed s always sits in slot `s %
    block` of its block.

    XLA's CPU kernels round some positions of a batch differently from others (the last rows of a
    batch run through a GEMM's edge kernel: in a block of 32 small 8x8 images, the last image's last
    pixels), so a sample's bits depend on its slot; fixing the slot by the seed makes them
    independent of the batch around it. L is the largest number of seeds sharing a slot, rounded up
    to a multiple of `multiple` (the device count): ceil(B / block) blocks for a range of
    consecutive seeds, as many as a seed range needs anyway, but one block per seed for seeds that
    all share a residue mod `block` (e.g. multiples of 128). Empty slots repeat the first seed
    (their samples are dropped)."""
    seeds = np.asarray(seeds)
    slot = (seeds % block).astype(np.int64)
    order = np.argsort(slot, kind="stable")
    rank = np.empty(len(seeds), np.int64)
    # k-th seed of its slot
    rank[order] = np.arange(len(seeds)) - np.searchsorted(slot[order], slot[order])
    count = -(-(int(rank.max()) + 1) // multiple) * multiple
    blocks = np.full((count, block), seeds[0], np.uint32)
    blocks[rank, slot] = seeds
    return blocks, rank * block + slot


def sample_sharded(sampler_fn: Callable[[jax.Array], jax.Array], seeds, mesh: Mesh, *,
                   axis: str = "data", compiler_options: dict | None = None,
                   block: int = SAMPLE_BLOCK) -> jax.Array:
    """Run a single-device `sampler_fn(seeds (B,)) -> samples (B, ...)` with seeds and samples
    sharded over the mesh axis `axis` (NamedSharding, PartitionSpec(axis)).

    Batch invariance: every device runs the one-device program on blocks of exactly `block` seeds,
    seed s always in slot `s % block` of its block (`seed_slots`; empty slots are filled and their
    rows dropped). XLA picks kernels and summation orders by shape (a LayerNorm over 7 rows rounds
    differently from one over 600), and some kernels round some slots differently from others (a
    convolution's last rows go through a GEMM's edge kernel), so a fixed shape and a fixed slot,
    with per-sample keys, are what make sample i depend on seed i alone, bit for bit, whatever B,
    the other seeds, the device count of the mesh or the job split (tests/test_batch_invariance.py).
    Keep the default `block` for samples that must match other runs. Consecutive seeds fill ceil(B /
    block) blocks; seeds sharing a residue mod `block` each need a block of their own. What the bits
    also depend on: the jax/jaxlib version, the processor's instruction set, and how many threads
    XLA's CPU runtime has (the CPUs the process may use, NPROC, the fake-device count of
    --xla_force_host_platform_device_count): Eigen's convolutions choose their blocking by thread
    count, so
    a process with other such settings can give other last bits for a convolutional network. Jobs
    that must add up to one sample set run with the same settings (on CPU: the same host type and
    environment). The program is compiled once per (sampler_fn, block shape), for the first device,
    and that binary is loaded on the others (`_OneBinary`): keep `sampler_fn` the same object across
    calls to avoid recompiling. Build the mesh as `Mesh(np.array(jax.devices()), ("data",))`.
    compiler_options: passed to `jax.jit`. With a mesh over several processes (jax.distributed)
    every process gets all B samples as numpy (an all-gather), so `np.asarray` of the result works
    everywhere.
    """
    seeds = np.asarray(seeds)
    if seeds.ndim != 1 or seeds.size == 0 or not np.issubdtype(seeds.dtype, np.integer):
        raise InputError(
            f"Expected a non-empty (B,) array of integer seeds; got {seeds.dtype} {seeds.shape}."
        )
    if seeds.min() < 0 or seeds.max() >= 2**32:
        raise InputError("Seeds must lie in [0, 2**32): each is read as a uint32.")
    if axis not in mesh.shape:
        raise InputError(
            f"Mesh has axes {tuple(mesh.shape)}; no axis {axis!r} to shard the seeds over."
        )
    if block < 1:
        raise InputError(f"block must be >= 1 seed per device; got {block}.")
    ndev = mesh.shape[axis]
    blocks, rows = seed_slots(seeds, block, ndev)
    run = _block_jit(sampler_fn, tuple(sorted((compiler_options or {}).items())))
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    outs = []
    for start in range(0, len(blocks), ndev):
        padded = blocks[start:start + ndev].reshape(-1)
        # Each device runs the one-device program on its own block (dispatched asynchronously, so
        # they run side by side): a program partitioned over a mesh is compiled differently (other
        # fusions, so other fused multiply-adds) from the one-device program, and its bits would
        # depend on the device count.
        shards = jax.device_put(padded, sharding).addressable_shards
        # compiles on the first call; the other devices load that binary
        out_blocks = [run(shards[0].data)]
        # in threads: where the binary cannot move, jax.jit compiles per device, side by side
        if len(shards) > 1:
            with concurrent.futures.ThreadPoolExecutor(len(shards) - 1) as pool:
                out_blocks += list(pool.map(lambda shard: run(shard.data), shards[1:]))
        out = jax.make_array_from_single_device_arrays(
            (len(padded),) + out_blocks[0].shape[1:], sharding, out_blocks
        )
        # a mesh over several processes (jax.distributed): every host gets all
        if not out.is_fully_addressable:
            out = multihost.to_host(out)
        outs.append(out)
    if isinstance(outs[0], np.ndarray):
        return np.concatenate(outs)[rows]
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs)
    # consecutive seeds from a multiple of block
    in_place = np.array_equal(rows, np.arange(len(rows)))
    return out[:len(rows)] if in_place else out[rows]
