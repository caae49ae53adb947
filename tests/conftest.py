"""Test-suite set-up: 8 fake CPU devices (so sharded code paths are exercised) and an x64 fixture."""
import os

# Must happen before jax is imported anywhere: sharding tests compare a 1-device mesh with 8 devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run one test in float64; restores the previous setting afterwards."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


@pytest.fixture()
def one_device(monkeypatch):
    """Make `train.data_mesh()` default to one device for a test that is not about sharding (small batches
    split over conftest's 8 fake CPU devices only add collectives)."""
    from diffmem import train
    full = train.data_mesh
    monkeypatch.setattr(train, "data_mesh", lambda devices=None: full(jax.devices()[:1] if devices is None else devices))
