"""Mechanism drivers and CLIs on workdirs of optimal denoisers (no training): critical times (resumable,
sharded, settings guarded), Jacobian rank of MoLRG, and the relative energy against a closed form."""
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import configlib, energy, report
from diffmem.errors import InputError
from diffmem.studies import mechanisms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ddpm_relative_energy_matches_closed_form(x64):
    """With the empirical denoiser, the DDPM force -beta_0 s - beta_0 x / 2 is the gradient of
    E(x) = -beta_0 log p_0(x) - beta_0 |x|^2 / 4, p_0 = mean_i N(sqrt(ab_0) y_i, (1 - ab_0) I): the path integral
    must equal E(x(a)) - E(x)."""
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.uniform(-1, 1, (5, 6)))
    beta0 = 0.02                                  # larger than DDPM's 1e-4 so the energy is smooth on the path
    ab0 = 1 - beta0
    grad = mechanisms.ddpm_energy_gradient(energy.empirical_denoiser(y), beta0)
    e = lambda x: (-beta0 * energy.log_sum_exp_sq(x, math.sqrt(ab0) * y, 1 / (1 - ab0)) - 0.25 * beta0 * jnp.sum(x**2, -1))
    x, r = jnp.asarray(rng.normal(size=(3, 6))), y[:3]
    prof = energy.relative_energy(grad, x, r, num=201)
    a = jnp.linspace(0, math.pi / 2, 201)[::40]
    exact = jax.vmap(lambda ai: e(jnp.cos(ai) * x + jnp.sin(ai) * r) - e(x), out_axes=1)(a)
    np.testing.assert_allclose(prof[:, ::40], exact, rtol=2e-3, atol=1e-6)


def test_critical_times_driver_resumable_sharded_and_guarded(tmp_path):
    config = configlib.load_config_file("configs/digits.py:k=2")
    wd = str(tmp_path / "opt")
    logs = []
    kw = dict(samples="train", kind="optimal", metric="l2", delta=1.0, trials=4, config=config, log=logs.append,
              progress=False)
    out = mechanisms.critical_times(wd, stop=1, **kw)
    shard = out["2"]
    assert shard.endswith("train/optimal/2_0-1.npz")
    r = report.read_npz(shard)
    assert r["time"].shape == (1, 4) and int(r["k"]) == 2 and np.all(r["time"] >= 1)
    assert np.all(r["time"] > 200)                # a training image of the optimal denoiser recovers far out
    mechanisms.critical_times(wd, start=1, **kw)
    merged = mechanisms.gather_critical_times(wd, kind="optimal")["train"][2]
    assert merged[0].shape == (2, 4)
    mechanisms.critical_times(wd, stop=1, **kw)
    assert logs[-1].startswith("2: finished")
    with pytest.raises(InputError, match="other settings"):
        mechanisms.critical_times(wd, stop=1, **{**kw, "delta": 0.5})
    with pytest.raises(InputError, match="delta is required"):
        mechanisms.critical_times(wd, **{**kw, "delta": None})
    assert os.path.exists(os.path.join(wd, "mechanisms", "critical_times", "critical_times_optimal.png"))


@pytest.mark.slow
def test_jacobian_rank_cli_on_molrg(tmp_path):
    wd = str(tmp_path / "molrg")
    cmd = [sys.executable, os.path.join(ROOT, "bin", "jacobian_rank.py"), "--config=configs/molrg.py:k=8",
           f"--workdir={wd}", "--model=optimal", "--latents=2", "--subset=0,8,17"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = report.read_npz(os.path.join(wd, "mechanisms", "jacobian", "8_optimal.npz"))
    assert r["rank"].shape == (3, 2) and int(r["n"]) == 48
    assert np.all(r["rank"][0] <= 7)              # J = Cov(posterior) / sigma^2 has rank <= K - 1
    assert np.all(r["rank"][-1] == 0)             # sigma 0.002: the optimal D copies one point, J = 0
    assert np.isfinite(r["snr_speciation"])
    assert os.path.exists(os.path.join(wd, "mechanisms", "jacobian", "rank_vs_snr_optimal.png"))


@pytest.mark.slow
def test_classes_from_classification_feed_critical_times_and_energy(tmp_path, one_device):
    """Optimal-denoiser samples of 4 digits, classified in pixel L2: the memorized ones (copies of training
    images) are read in d_m order, scanned, and their energy paths to the nearest training image written."""
    from diffmem import generate
    from diffmem.studies import memorization
    config = configlib.load_config_file("configs/digits.py:k=4")
    wd = str(tmp_path / "d4")
    generate.sample_workdir(wd, np.arange(6), "ddim", model="optimal", config=config, num_steps=10, progress=False)
    memorization.run(wd, metric="pixel", delta_m=1.0, delta_s=0.5, figures=False, log=None)
    sel = mechanisms.select_samples(mechanisms.open_workdir(wd), "4", "memorized", kind="optimal")
    d_m = report.read_npz(os.path.join(wd, "classify", "optimal", "4.npz"))["d_m"]
    assert len(sel["x"]) >= 1 and np.all(np.diff(np.sort(d_m)[: len(sel["x"])]) >= 0)
    out = mechanisms.critical_times(wd, samples="memorized", kind="optimal", metric="l2", delta=1.0, trials=2,
                                    log=None, progress=False, figures=False)
    assert report.read_npz(out["4"])["time"].shape == (len(sel["x"]), 2)
    res = mechanisms.energy_profiles(wd, kind="optimal", per_class=2, num=8, log=None)["4"]
    assert res["profiles"].shape[1] == 8 and np.all(res["profiles"][:, 0] == 0)
    assert np.all(res["barrier"] >= 0) and 0 in set(res["labels"].tolist())
    assert os.path.exists(os.path.join(wd, "mechanisms", "energy", "energy_optimal.png"))
