"""The opt-in CPU policy (`bin/train.py --cpu_policy`): one XLA thread for toy training on small
batches only."""
import os
import subprocess
import sys

import pytest

from diffmem import configlib, cpu_parallel, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def two_core_cpu_host(monkeypatch):
    monkeypatch.setattr(cpu_parallel, "num_cores", lambda: 2)
    return {"JAX_PLATFORMS": "cpu"}  # a job environment: CPU only, one host device, no NPROC


def test_one_thread_only_for_small_batches_on_a_plain_cpu_host(two_core_cpu_host):
    env = dict(two_core_cpu_host)
    assert cpu_parallel.one_thread_for_small_batches(9, env) and env["NPROC"] == "1"
    env = dict(two_core_cpu_host)
    assert (
        not cpu_parallel.one_thread_for_small_batches(cpu_parallel.SMALL_BATCH, env)
        and "NPROC" not in env
    )


@pytest.mark.parametrize(
    "extra",
    [{"NPROC": "2"}, {"JAX_PLATFORMS": "cuda"}, {"JAX_PLATFORMS": "tpu,cpu"},
     {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}],
)
def test_one_thread_leaves_user_choices_meshes_and_accelerators_alone(two_core_cpu_host, extra):
    env = two_core_cpu_host | extra
    assert not cpu_parallel.one_thread_for_small_batches(9, env)
    assert env.get("NPROC") == extra.get("NPROC")


def test_trainer_asks_for_one_thread_with_its_largest_batch(monkeypatch):
    rows = []
    monkeypatch.setattr(
        cpu_parallel, "one_thread_for_small_batches", lambda r: rows.append(r) or True
    )
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
    # convolutional nets keep every thread
    assert not train.use_one_cpu_thread_if_small(c) and not rows


@pytest.mark.parametrize("flag, nproc", [([], "unset"), (["--cpu_policy"], "1")])
def test_the_policy_is_opt_in(flag, nproc, tmp_path):
    """bin/train.py leaves the thread count alone unless asked (the job is stopped right after the
    choice)."""
    probe = ("import os, sys, runpy; from diffmem import train\n"
             "def stop(*a, **k): print('NPROC=' + os.environ.get('NPROC', 'unset')); sys.exit(0)\n"
             "train.train = stop\n"
             "sys.argv = ['bin/train.py'] + sys.argv[1:]\n"
             "runpy.run_path('bin/train.py', run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC", "XLA_FLAGS")} | {
        "JAX_PLATFORMS": "cpu"
    }
    out = subprocess.run(
        [sys.executable, "-c", probe, "--config=configs/circle.py:k=9", f"--workdir={tmp_path}",
         *flag],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if cpu_parallel.num_cores() < 2:
        pytest.skip("one core: the policy never applies")
    assert f"NPROC={nproc}" in out.stdout, out.stdout + out.stderr
