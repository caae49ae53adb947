"""Test-suite set-up: 8 fake CPU devices (so sharded code paths are exercised), a per-session XLA
compilation cache, and the x64 and one_device fixtures."""
import atexit
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere: sharding tests compare a 1-device mesh with 8
# devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("MPLBACKEND", "Agg")

# JAX's persistent compilation cache in a fresh folder per session (removed at exit), inherited by
# the scripts and workers the tests start: many tests compile the same program again (the same tiny
# config trained or sampled in several tests, the SIGKILL test's five trainers, CLI subprocesses),
# and XLA's compile is most of a test's time on a 2-core CPU. A hit loads the binary compiled the
# first time, so the bits are the same.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="diffmem-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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
    """Make `devices.data_mesh()` default to one device for a test that is not about sharding (small
    batches split over conftest's 8 fake CPU devices only add collectives)."""
    from diffmem import devices
    full = devices.data_mesh
    monkeypatch.setattr(
        devices,
        "data_mesh",
        lambda devices=None: full(jax.devices()[:1] if devices is None else devices),
    )


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): one worker per core, at most 4. XLA's compiles are
    single-threaded and most of a test's time on a small CPU, so two workers on CI's 2 cores finish
    well before one; each worker runs JAX with 8 fake devices, so more than 4 only adds memory. `-n
    0` runs in this process."""
    return max(1, min(os.cpu_count() or 1, 4))
