"""The package as a user installs it: the wheel into a fresh virtual environment, then the console
commands run from outside the checkout (configs found by name, --help without a config)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bin_scripts_are_the_console_commands():
    import tomllib
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    names = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "bin")) if f.endswith(".py"))
    assert sorted(scripts) == sorted("diffmem-" + n.replace("_", "-") for n in names)
    for n in names:
        assert scripts["diffmem-" + n.replace("_", "-")] == f"diffmem.commands.{n}:run"
        with open(os.path.join(REPO, "bin", f"{n}.py")) as f:
            assert f"from diffmem.commands.{n} import run" in f.read()


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_trains_and_samples_from_outside_the_checkout(tmp_path):
    venv = tmp_path / "venv"
    # the environment's packages (jax, flax, ...) are visible; diffmem itself comes from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    out = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", REPO],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH="")
    where = subprocess.run([py, "-c", "import diffmem; print(diffmem.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, env=env)
    assert str(venv) in where.stdout, where.stdout + where.stderr   # not the checkout's copy

    def command(name, *args):
        return subprocess.run([str(venv / "bin" / name), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    helped = command("diffmem-train", "--help")
    assert helped.returncode == 0 and "--workdir" in helped.stdout and "circle" in helped.stdout
    wd = str(tmp_path / "run")
    trained = command("diffmem-train", "--config=circle:k=2,steps=20", "--config.steps_per_call=10",
                      "--config.log_every=10", "--config.ckpt_every=10", f"--workdir={wd}",
                      "--noprogress")
    assert trained.returncode == 0, trained.stderr[-2000:]
    sampled = command("diffmem-sample", f"--workdir={wd}", "--seeds=0-3", "--sample_steps=5")
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    assert os.listdir(os.path.join(wd, "samples", "2"))
