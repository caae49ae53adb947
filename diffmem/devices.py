"""The devices a computation runs on: the 1-D data mesh and the matmul precision.

    mesh = devices.data_mesh()                      # every device of every process, axis "data"
    mesh = devices.data_mesh(jax.devices()[:1])     # one device
    with devices.matmul_precision("bfloat16"):      # bf16 matmuls / convolutions on accelerators
        ...

Training shards its batch and sampling its seeds over `data_mesh()` (`jax.sharding.NamedSharding`);
the same code runs on one CPU, on fake CPU devices, on accelerators and over several hosts
(`diffmem.multihost`).
"""
from __future__ import annotations

import contextlib

import jax
import numpy as np
from jax.sharding import Mesh

from diffmem.errors import InputError

__all__ = ["MATMUL_PRECISIONS", "data_mesh", "matmul_precision"]

MATMUL_PRECISIONS = ("default", "bfloat16", "tensorfloat32", "float32", "highest")
"""Values of `config.matmul_precision` (`jax.default_matmul_precision`; "default": XLA's own)."""


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def matmul_precision(name: str = "default"):
    """A context for tracing computations with matmul precision `name` ("bfloat16": bf16 matmuls and
    convolutions on accelerators, float32 accumulation; no effect on CPU); a no-op for "default"."""
    if name not in MATMUL_PRECISIONS:
        raise InputError(f"matmul_precision {name!r}; valid: {list(MATMUL_PRECISIONS)}.")
    return contextlib.nullcontext() if name == "default" else jax.default_matmul_precision(name)
