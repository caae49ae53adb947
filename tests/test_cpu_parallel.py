"""cpu_parallel: splitting a batch over CPU cores and the Eigen-dot compilation change nothing but speed."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import configlib, cpu_parallel, nets, train
from diffmem import sde as sde_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def three_slices(monkeypatch):
    # The suite runs with 8 host devices, where splitting is off; force it as a 1-device, 3-core host would.
    monkeypatch.setattr(cpu_parallel, "num_slices", lambda rows: 3 if rows >= 6 else 1)


def test_num_slices_only_on_one_cpu_device():
    assert cpu_parallel.num_slices(10**6) == (min(cpu_parallel.num_cores(), 4000) if jax.device_count() == 1 else 1)
    assert cpu_parallel.num_slices(cpu_parallel.MIN_ROWS - 1) == 1


@pytest.mark.parametrize("shared_time", [False, True])
def test_split_batch_gives_the_network_values_row_by_row(three_slices, shared_time):
    sde = sde_lib.VESDE()
    model = nets.ScoreMLP(sde.marginal_std)
    x = jax.random.normal(jax.random.key(0), (200, 2))
    t = jnp.full((1,), 0.3) if shared_time else jax.random.uniform(jax.random.key(1), (200,), minval=0.01)
    params = model.init(jax.random.key(2), x, t)
    # Slices of 66, 67, 67 rows use the same composed first layer as the whole batch (all > d + embed).
    whole = model.apply(params, x, t)
    split = jax.jit(cpu_parallel.split_batch(lambda a, b: model.apply(params, a, b)))(x, t)
    np.testing.assert_allclose(split, whole, rtol=2e-5, atol=2e-5)  # float32 rounding of other dot kernels


def test_eigen_dot_compilation_gives_the_same_values(three_slices):
    options = cpu_parallel.compiler_options(600)
    if jax.default_backend() != "cpu" or not cpu_parallel._has_ynn_option():
        pytest.skip("no YNNPACK option in this jaxlib/backend")
    assert options == {"xla_cpu_experimental_ynn_fusion_type": ""}
    x = jax.random.normal(jax.random.key(0), (600, 128))
    w = jax.random.normal(jax.random.key(1), (128, 128))
    f = lambda a: jnp.tanh(a @ w) @ w
    compiled = jax.jit(f, compiler_options=options).lower(x).compile()
    assert "ynn" not in compiled.as_text()
    np.testing.assert_allclose(compiled(x), jax.jit(f)(x), rtol=1e-5, atol=1e-4)
    assert cpu_parallel.compiler_options(5) is None  # a batch not worth splitting keeps the default


def test_training_with_split_batches_matches_whole_batches(monkeypatch, tmp_path):
    """The DSM loss of a split batch draws the same t and noise per example, so training follows the same
    path up to float rounding of the batch sums."""
    def run(slices, workdir):
        monkeypatch.setattr(cpu_parallel, "num_slices", lambda rows: slices if rows >= 6 else 1)
        c = configlib.load_config_file(os.path.join(REPO, "configs/circle.py") + ":k=12")
        c.batch_size, c.steps, c.steps_per_call, c.log_every, c.ckpt_every = 12, 40, 20, 20, 40
        return train.train(c, str(workdir), mesh=train.data_mesh(jax.devices()[:1]), progress=False)["12"]
    whole, split = run(1, tmp_path / "whole"), run(3, tmp_path / "split")
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(split.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture
def two_core_cpu_host(monkeypatch):
    monkeypatch.setattr(cpu_parallel, "num_cores", lambda: 2)
    return {"JAX_PLATFORMS": "cpu"}  # a job environment: CPU only, one host device, no NPROC


def test_one_thread_only_for_small_batches_on_a_plain_cpu_host(two_core_cpu_host):
    env = dict(two_core_cpu_host)
    assert cpu_parallel.one_thread_for_small_batches(9, env) and env["NPROC"] == "1"
    env = dict(two_core_cpu_host)
    assert not cpu_parallel.one_thread_for_small_batches(2 * cpu_parallel.MIN_ROWS, env) and "NPROC" not in env


@pytest.mark.parametrize("extra", [{"NPROC": "2"}, {"JAX_PLATFORMS": "cuda"}, {"JAX_PLATFORMS": "tpu,cpu"},
                                   {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}])
def test_one_thread_leaves_user_choices_meshes_and_accelerators_alone(two_core_cpu_host, extra):
    env = two_core_cpu_host | extra
    assert not cpu_parallel.one_thread_for_small_batches(9, env)
    assert env.get("NPROC") == extra.get("NPROC")


def test_trainer_asks_for_one_thread_with_its_largest_batch(monkeypatch):
    rows = []
    monkeypatch.setattr(cpu_parallel, "one_thread_for_small_batches", lambda r: rows.append(r) or True)
    for arg, expected in (("k=2+9", 9), ("k=2+9+1000", 500), ("k=1000,batch=64", 64)):
        c = configlib.load_config_file(os.path.join(REPO, "configs/circle.py") + ":" + arg)
        assert train.use_one_cpu_thread_if_small(c)
        assert rows[-1] == expected
    c = configlib.load_config_file(os.path.join(REPO, "configs/circle.py") + ":k=9")
    c.batch_size = 0
    with pytest.raises(configlib.ConfigError):  # a bad config stops before anything changes
        train.use_one_cpu_thread_if_small(c)
    rows.clear()
    c = configlib.load_config_file(os.path.join(REPO, "configs/digits.py"))
    assert not train.use_one_cpu_thread_if_small(c) and not rows  # convolutional nets keep every thread
